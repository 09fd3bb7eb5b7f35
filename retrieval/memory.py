"""A bounded retrieval memory: stream examples and an external corpus behind vector search.

Entries are (embedding, label, payload id, source). Stream entries (``source="stream"``)
are sampled by reservoirs when ``per_class_cap`` / ``max_size`` bind; external entries
(``source="external"``, e.g. an image-text corpus, label -1 when unlabeled) are never
evicted. Searches return :class:`Neighbours` with fixed shape (B, k) and a mask.

    memory = RetrievalMemory(dim=512, backend="hnsw", per_class_cap=20)
    memory.add(emb, labels, payload_ids=idx, encoder_tag="clip-b16@step0")
    nb = memory.search(query_emb, k=5, exclude_payload=query_idx)  # never the query itself
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from .index import INDEX_BACKENDS, VectorIndex, _allowed, as_float_matrix, as_id_array, check_int, \
    check_metric, create_index

__all__ = ["RetrievalMemory", "Neighbours", "StaleMemoryError", "SOURCES"]

SOURCES = ("stream", "external")  # stored as codes 0 and 1; -1 marks a free row
_STATE_VERSION = 1
_REBUILD_EXACT = ("exact", "flat")  # rebuilding these from the embeddings is bit-exact


class StaleMemoryError(ValueError):
    """The memory's embeddings come from a different encoder than the caller's."""


@dataclass
class Neighbours:
    """Search results for B queries, ``k`` slots each, best first.

    Attributes:
        embeddings: (B, k, dim) float32, zeros where ``mask`` is False.
        labels: (B, k) int64, -1 where ``mask`` is False (and for unlabeled external items).
        scores: (B, k) float32 similarity (cosine or inner product), -inf where ``mask`` is False.
        ids: (B, k) int64 entry ids, -1 where ``mask`` is False.
        payload_ids: (B, k) int64 (e.g. image or caption ids), -1 where none.
        sources: (B, k) int64: 0 stream, 1 external, -1 where ``mask`` is False.
        mask: (B, k) bool, True where a real neighbour exists.
    """

    embeddings: Tensor
    labels: Tensor
    scores: Tensor
    ids: Tensor
    payload_ids: Tensor
    sources: Tensor
    mask: Tensor


def _source_code(source: Any) -> int:
    if source not in SOURCES:
        raise ValueError(f"source must be one of {_allowed(SOURCES)}, got {source!r}")
    return SOURCES.index(source)


def _optional_int(name: str, value: Any, minimum: int) -> int | None:
    return None if value is None else check_int(name, value, minimum)


class RetrievalMemory:
    """Embeddings with labels and payload ids, searchable by similarity, bounded in size.

    Args:
        dim: embedding dimension.
        backend: vector index, one of ``INDEX_BACKENDS`` (see :func:`create_index`); one
            index per source (stream, external), merged at search time.
        metric: ``"cosine"`` or ``"ip"``.
        per_class_cap: max stream entries per label. Beyond it each class is a reservoir
            (algorithm R): the t-th example of a class replaces a uniformly chosen kept one
            with probability cap / t, so every example seen so far is kept with equal
            probability.
        max_size: max total entries. Stream entries form a reservoir over all stream
            examples (capacity ``max_size`` minus the external entries); external entries
            count too but are never evicted (adding external ones evicts random stream
            entries to make room; external alone above ``max_size`` is an error). With both
            limits, the class reservoir runs first and the global one sees the items that
            would grow the memory: sizes stay bounded, the sample is approximately uniform.
        seed: seed of the reservoir RNG (a CPU ``torch.Generator``, saved in the state).
        device: where the embeddings (and an exact index) live.
        index_args: extra backend arguments (e.g. ``{"ef_search": 128}``).

    Memory cost (:attr:`bytes_per_entry`): ``4·dim`` (float32 embedding kept by the
    memory) + 8 (label) + 8 (payload id) + 8 (entry id) + 1 (source) + the index's own
    bytes per vector (``VectorIndex.bytes_per_vector``; e.g. ``4·dim + 16`` for exact).

    Encoder staleness: ``encoder_tag`` names the encoder that produced the stored
    embeddings (set by the first tagged ``add`` into an empty memory, or by
    :meth:`reembed`). A tagged ``add``/``search`` on a non-empty memory with another tag
    raises :class:`StaleMemoryError`; untagged calls are not checked.
    """

    def __init__(self, dim: int, backend: str = "exact", metric: str = "cosine",
                 per_class_cap: int | None = None, max_size: int | None = None, seed: int = 0,
                 device: str | torch.device = "cpu", index_args: dict[str, Any] | None = None) -> None:
        self.dim = check_int("dim", dim, 1)
        if backend not in INDEX_BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: allowed {_allowed(INDEX_BACKENDS)}")
        self.backend = backend
        self.metric = check_metric(metric)
        self.per_class_cap = _optional_int("per_class_cap", per_class_cap, 1)
        self.max_size = _optional_int("max_size", max_size, 1)
        self.seed = check_int("seed", seed, 0)
        self.device = torch.device(device)
        self.index_args = dict(index_args or {})
        self._make_index()  # fail early on bad index_args
        self._gen = torch.Generator().manual_seed(self.seed)
        self.clear()

    # ------------------------------------------------------------------ basics
    def clear(self) -> None:
        """Drop every entry, the reservoir counters and the encoder tag (the RNG continues)."""
        self.encoder_tag: str | None = None
        self._emb = torch.empty(0, self.dim, dtype=torch.float32, device=self.device)
        self._label = torch.empty(0, dtype=torch.int64)  # metadata on CPU: read per item by the reservoir
        self._payload = torch.empty(0, dtype=torch.int64)
        self._entry = torch.empty(0, dtype=torch.int64)
        self._source = torch.empty(0, dtype=torch.int8)
        self._n_rows = 0
        self._free: list[int] = []  # rows freed by external additions, reused first
        self._next_entry = 0
        self._seen_stream = 0
        self._seen_class: dict[int, int] = {}
        self._class_rows: dict[int, list[int]] = {}  # stream rows per label, in reservoir-slot order
        self._stream_rows: list[int] = []  # all stream rows, in global-reservoir-slot order
        self._n_external = 0
        # index ids are row numbers: a replaced entry reuses its row
        self._indexes = {0: self._make_index(), 1: self._make_index()}

    def _make_index(self) -> VectorIndex:
        args = {"device": self.device, **self.index_args}
        return create_index(self.backend, self.dim, self.metric, **args)

    def __len__(self) -> int:
        return len(self._stream_rows) + self._n_external

    def __repr__(self) -> str:
        return (f"RetrievalMemory(dim={self.dim}, backend={self.backend!r}, stream={len(self._stream_rows)}, "
                f"external={self._n_external}, encoder_tag={self.encoder_tag!r})")

    @property
    def n_stream(self) -> int:
        return len(self._stream_rows)

    @property
    def n_external(self) -> int:
        return self._n_external

    def _alive(self) -> Tensor:
        return self._source[: self._n_rows] >= 0

    def labels_present(self) -> Tensor:
        """Sorted distinct labels (>= 0) of the stored entries, (L,) int64 CPU tensor."""
        lab = self._label[: self._n_rows][self._alive()]
        return torch.unique(lab[lab >= 0])

    def payload_ids(self, source: str | None = None) -> Tensor:
        """Payload ids of the stored entries (of ``source`` only, if given), (n,) int64 CPU tensor."""
        keep = self._alive()
        if source is not None:
            keep = keep & (self._source[: self._n_rows] == _source_code(source))
        return self._payload[: self._n_rows][keep].clone()

    def counts_per_class(self) -> dict[int, int]:
        """Stored entries per label (labels >= 0; stream and labeled external together)."""
        lab = self._label[: self._n_rows][self._alive()]
        values, counts = torch.unique(lab[lab >= 0], return_counts=True)
        return dict(zip(values.tolist(), counts.tolist()))

    @property
    def bytes_per_entry(self) -> float:
        """``4·dim + 8 + 8 + 8 + 1`` (embedding, label, payload id, entry id, source) plus
        the index's bytes per vector (measured, or its nominal cost while empty)."""
        per_index = [ix.bytes_per_vector for ix in self._indexes.values() if len(ix)] or \
            [self._indexes[0].bytes_per_vector]
        n = [len(ix) for ix in self._indexes.values() if len(ix)] or [1]
        return 4 * self.dim + 25 + sum(b * m for b, m in zip(per_index, n)) / sum(n)

    @property
    def nbytes(self) -> int:
        """Allocated bytes: the memory's arrays (capacity grows by doubling) plus the indexes."""
        own = sum(t.nbytes for t in (self._emb, self._label, self._payload, self._entry, self._source))
        return own + sum(ix.nbytes for ix in self._indexes.values())

    # ------------------------------------------------------------------ staleness
    def _check_tag(self, tag: str | None) -> None:
        if tag is None or len(self) == 0 or tag == self.encoder_tag:
            return
        raise StaleMemoryError(
            f"stale retrieval memory: its {len(self)} entries were embedded with encoder_tag="
            f"{self.encoder_tag!r}, this call uses {tag!r}; call memory.reembed(embed_fn, {tag!r}) "
            f"to re-embed them or memory.clear() to start over")

    # ------------------------------------------------------------------ adding
    def add(self, embeddings: Tensor | np.ndarray, labels: Any = None, payload_ids: Any = None,
            source: str = "stream", encoder_tag: str | None = None) -> Tensor:
        """Add N entries.

        Args:
            embeddings: (N, dim), any float dtype (stored as float32 on ``device``).
            labels: (N,) int64 class labels; required (>= 0) for stream entries, default -1
                (unlabeled) for external ones.
            payload_ids: (N,) int64 ids of what was embedded (image / caption index), used
                by ``exclude_payload`` and :meth:`reembed`; default -1 (none).
            source: ``"stream"`` or ``"external"``.
            encoder_tag: the encoder that produced ``embeddings`` (see class docstring).
        Returns:
            Entry ids of the new entries that were kept, (n_kept,) int64 CPU tensor.
        """
        src = _source_code(source)
        emb = as_float_matrix(embeddings, "embeddings", self.dim, owner="memory")
        n = emb.shape[0]
        if labels is None:
            if src == 0:
                raise ValueError("labels are required for stream entries (use add_external for unlabeled items)")
            lab = np.full(n, -1, np.int64)
        else:
            lab = as_id_array(labels, "labels", n)
        if n and lab.min() < (0 if src == 0 else -1):
            raise ValueError(f"labels must be >= {0 if src == 0 else -1} for {source} entries, got {int(lab.min())}")
        pay = np.full(n, -1, np.int64) if payload_ids is None else as_id_array(payload_ids, "payload_ids", n)
        self._check_tag(encoder_tag)
        if src == 1 and self.max_size is not None and self._n_external + n > self.max_size:
            raise ValueError(f"external entries alone ({self._n_external + n}) would exceed "
                             f"max_size={self.max_size}; raise max_size or add fewer external items")
        if encoder_tag is not None and len(self) == 0:
            self.encoder_tag = encoder_tag
        if n == 0:
            return torch.empty(0, dtype=torch.int64)

        placed: dict[int, int] = {}  # row -> index of the new item now in it
        if src == 1:
            self._make_room(n)
            for i in range(n):
                placed[self._new_row()] = i
            self._n_external += n
        else:
            pending: dict[int, int] = {}  # row -> label placed there during this call
            for i, c in enumerate(lab.tolist()):
                row = self._reservoir_step(c, pending)
                if row is not None:
                    placed[row], pending[row] = i, c
        return self._write(emb, lab, pay, src, placed)

    def add_external(self, embeddings: Tensor | np.ndarray, labels: Any = None, payload_ids: Any = None,
                     encoder_tag: str | None = None) -> Tensor:
        """:meth:`add` with ``source="external"`` (labels default -1: unlabeled)."""
        return self.add(embeddings, labels, payload_ids, source="external", encoder_tag=encoder_tag)

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self._gen))

    def _new_row(self) -> int:
        if self._free:
            return self._free.pop()
        self._n_rows += 1
        return self._n_rows - 1

    def _reservoir_step(self, c: int, pending: dict[int, int]) -> int | None:
        """Where the next stream example of class ``c`` goes: a row, or None (not kept)."""
        self._seen_stream += 1
        seen_c = self._seen_class[c] = self._seen_class.get(c, 0) + 1
        rows_c = self._class_rows.setdefault(c, [])
        cap = self.per_class_cap
        if cap is not None and len(rows_c) >= cap:
            j = self._randint(seen_c)
            return rows_c[j] if j < cap else None  # replace a kept example of the same class
        if self.max_size is not None and len(self) >= self.max_size:
            j = self._randint(self._seen_stream)
            stream_cap = self.max_size - self._n_external
            if j >= stream_cap:
                return None
            row = self._stream_rows[j]  # keeps its global slot, may change class
            old = pending[row] if row in pending else int(self._label[row])
            self._class_rows[old].remove(row)
            rows_c.append(row)
            return row
        row = self._new_row()
        rows_c.append(row)
        self._stream_rows.append(row)
        return row

    def _make_room(self, n_new_external: int) -> None:
        """Evict uniformly random stream entries so ``n_new_external`` more entries fit."""
        if self.max_size is None:
            return
        excess = len(self) + n_new_external - self.max_size
        if excess <= 0:
            return
        order = torch.randperm(len(self._stream_rows), generator=self._gen)[:excess].tolist()
        victims = [self._stream_rows[j] for j in order]
        gone = set(victims)
        self._stream_rows = [r for r in self._stream_rows if r not in gone]
        for r in victims:
            self._class_rows[int(self._label[r])].remove(r)
        self._indexes[0].remove(victims)
        self._source[victims] = -1
        self._label[victims] = -1
        self._payload[victims] = -1
        self._entry[victims] = -1
        self._free.extend(sorted(victims, reverse=True))  # pop() then reuses the lowest row first

    def _ensure_capacity(self, rows: int) -> None:
        cap = self._emb.shape[0]
        if rows <= cap:
            return
        new_cap = max(rows, 2 * cap)
        if self.max_size is not None:
            new_cap = max(rows, min(new_cap, self.max_size))

        def grow(t: Tensor, fill: int | float) -> Tensor:
            out = torch.full((new_cap, *t.shape[1:]), fill, dtype=t.dtype, device=t.device)
            out[:cap] = t
            return out

        self._emb = grow(self._emb, 0.0)
        self._label, self._payload, self._entry = (grow(t, -1) for t in (self._label, self._payload, self._entry))
        self._source = grow(self._source, -1)

    def _write(self, emb: Tensor, lab: np.ndarray, pay: np.ndarray, src: int, placed: dict[int, int]) -> Tensor:
        """Store the placed items in their rows and update the index (one remove, one add)."""
        if not placed:
            return torch.empty(0, dtype=torch.int64)
        self._ensure_capacity(self._n_rows)
        rows = torch.tensor(sorted(placed), dtype=torch.int64)
        items = torch.tensor([placed[r] for r in rows.tolist()], dtype=torch.int64)
        # rows that held an indexed entry before this call (reservoir replacements)
        old_source = self._source[rows]
        for s, ix in self._indexes.items():
            if bool((old_source == s).any()):
                ix.remove(rows[old_source == s])
        # entry ids follow arrival order: kept items get consecutive ids in input order
        order = torch.argsort(items)
        entry = torch.empty_like(items)
        entry[order] = torch.arange(self._next_entry, self._next_entry + len(items))
        self._next_entry += len(items)
        self._emb[rows] = emb[items].to(self.device)
        self._label[rows] = torch.from_numpy(lab)[items]
        self._payload[rows] = torch.from_numpy(pay)[items]
        self._entry[rows] = entry
        self._source[rows] = src
        self._indexes[src].add(self._emb[rows], ids=rows)
        return entry[order]

    # ------------------------------------------------------------------ search
    def search(self, queries: Tensor | np.ndarray, k: int, exclude_ids: Any = None, exclude_payload: Any = None,
               source: str | None = None, encoder_tag: str | None = None) -> Neighbours:
        """The ``k`` most similar entries for each query.

        Args:
            queries: (B, dim), any float dtype.
            k: neighbours per query (>= 1).
            exclude_ids: (B, m) int64 entry ids never returned for the matching query
                ((B,) is read as m=1; -1 entries are ignored).
            exclude_payload: (B,) int64 payload id never returned for the matching query
                (e.g. the query image itself in episodic training); -1 excludes nothing.
            source: ``"stream"``, ``"external"`` or None (both).
            encoder_tag: the encoder that produced ``queries`` (checked against the memory).
        Returns:
            :class:`Neighbours` on the queries' device (the memory's device for numpy
            queries). Excluded items are dropped and the search widened, so every row has
            ``k`` neighbours when enough non-excluded entries exist (exact backends; the
            approximate ones are best effort); missing slots are masked out.
        """
        k = check_int("k", k, 1)
        q = as_float_matrix(queries, "queries", self.dim, owner="memory")
        out = queries.device if isinstance(queries, Tensor) else self.device
        self._check_tag(encoder_tag)
        if len(self) == 0:
            raise ValueError("retrieval memory is empty: add stream examples or an external corpus before evaluation")
        codes = (0, 1) if source is None else (_source_code(source),)
        indexes = [self._indexes[c] for c in codes if len(self._indexes[c])]
        if not indexes:
            raise ValueError(f"retrieval memory has no {source!r} entries (it holds {self.n_stream} stream, "
                             f"{self.n_external} external)")
        b = q.shape[0]
        ex_ids = None if exclude_ids is None else self._exclusion(exclude_ids, "exclude_ids", b, matrix=True)
        ex_pay = None if exclude_payload is None else self._exclusion(exclude_payload, "exclude_payload", b)

        total = sum(len(ix) for ix in indexes)
        n_excluded = (0 if ex_ids is None else ex_ids.shape[1]) + (0 if ex_pay is None else 1)
        kk = min(k + n_excluded, total)
        while True:  # widen until every row has k kept neighbours or nothing is left to fetch
            scores, rows = self._search_rows(q, kk, indexes)
            valid = rows >= 0
            safe = rows.clamp(min=0)
            if ex_ids is not None:
                valid &= ~(self._entry[safe].unsqueeze(2) == ex_ids.unsqueeze(1)).any(2)
            if ex_pay is not None:
                valid &= ~((self._payload[safe] == ex_pay[:, None]) & (ex_pay[:, None] >= 0))
            if kk >= total or bool((valid.sum(1) >= k).all()):
                break
            kk = min(2 * kk, total)
        if kk < k:  # fewer entries than k: pad
            pad = k - kk
            scores = torch.cat([scores, torch.full((b, pad), -math.inf)], 1)
            rows = torch.cat([rows, torch.full((b, pad), -1, dtype=torch.int64)], 1)
            valid = torch.cat([valid, torch.zeros(b, pad, dtype=torch.bool)], 1)
        # the first k kept columns of each row, still best first (stable sort on "dropped")
        order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)[:, :k]
        mask = torch.gather(valid, 1, order)
        rows = torch.where(mask, torch.gather(rows, 1, order), -1)
        scores = torch.where(mask, torch.gather(scores, 1, order), -math.inf)
        safe = rows.clamp(min=0)
        meta = [torch.where(mask, t[safe], -1) for t in (self._label, self._entry, self._payload)]
        sources = torch.where(mask, self._source[safe].to(torch.int64), -1)
        emb = self._emb[safe.to(self.device)].masked_fill(~mask.to(self.device).unsqueeze(2), 0.0)
        return Neighbours(embeddings=emb.to(out), labels=meta[0].to(out), scores=scores.to(out),
                          ids=meta[1].to(out), payload_ids=meta[2].to(out), sources=sources.to(out),
                          mask=mask.to(out))

    @staticmethod
    def _exclusion(x: Any, name: str, b: int, matrix: bool = False) -> Tensor:
        t = torch.as_tensor(x).detach().cpu()
        if t.is_floating_point() or t.dtype == torch.bool:
            raise TypeError(f"{name} must be integers, got dtype {t.dtype}")
        t = t.to(torch.int64)
        if matrix and t.dim() == 1:
            t = t.unsqueeze(1)
        want = "(B, m)" if matrix else "(B,)"
        if t.dim() != (2 if matrix else 1) or t.shape[0] != b:
            raise ValueError(f"{name} must have shape {want} with B={b} queries, got {tuple(t.shape)}")
        return t

    def _search_rows(self, q: Tensor, kk: int, indexes: list[VectorIndex]) -> tuple[Tensor, Tensor]:
        """Merged top-``kk`` over the given indexes: (B, kk) CPU scores and rows (-1 padding)."""
        found = [tuple(t.cpu() for t in ix.search(q, kk)) for ix in indexes]
        if len(found) == 1:
            return found[0]
        scores, pos = torch.topk(torch.cat([s for s, _ in found], 1), kk, dim=1)
        return scores, torch.gather(torch.cat([r for _, r in found], 1), 1, pos)

    # ------------------------------------------------------------------ re-embedding
    def reembed(self, embed_fn: Callable[[Tensor], Tensor], tag: str | None) -> None:
        """Re-embed every entry with a new encoder and rebuild the indexes (explicit, never
        automatic).

        Args:
            embed_fn: maps payload ids, (n,) int64 CPU tensor, to embeddings (n, dim) float;
                the caller batches inside it. Every entry needs a payload id (>= 0).
            tag: the new encoder tag, stored in :attr:`encoder_tag`.
        """
        rows = self._alive().nonzero().squeeze(1)
        pay = self._payload[rows]
        if bool((pay < 0).any()):
            raise ValueError(f"cannot re-embed: {int((pay < 0).sum())} entries have no payload id (-1); "
                             f"call clear() and add them again instead")
        if rows.numel():
            new = as_float_matrix(embed_fn(pay.clone()), "embed_fn output", self.dim, owner="memory")
            if new.shape[0] != rows.numel():
                raise ValueError(f"embed_fn returned {new.shape[0]} embeddings for {rows.numel()} payload ids")
            self._emb[rows.to(self.device)] = new.to(self.device)
        self._indexes = {0: self._make_index(), 1: self._make_index()}
        self._index_rows(rows)
        self.encoder_tag = tag

    def _index_rows(self, rows: Tensor) -> None:
        src = self._source[rows]
        for s, ix in self._indexes.items():
            rs = rows[src == s]
            if rs.numel():
                ix.add(self._emb[rs.to(self.device)], ids=rs)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain Python data only (``torch.load(weights_only=True)`` reads it):
        entries, reservoir counters and slot orders, the RNG state and the encoder tag.

        Indexes: exact and flat ones are rebuilt from the embeddings on load (bit-exact);
        IVF and HNSW ones are stored as FAISS index bytes (uint8 tensors), since k-means
        and multi-threaded graph construction need not repeat bit for bit.
        """
        n = self._n_rows
        keep_index = self.backend not in _REBUILD_EXACT
        return {
            "version": _STATE_VERSION,
            "config": {"dim": self.dim, "backend": self.backend, "metric": self.metric,
                       "per_class_cap": self.per_class_cap, "max_size": self.max_size, "seed": self.seed,
                       "index_args": dict(self.index_args)},
            "encoder_tag": self.encoder_tag,
            "embeddings": self._emb[:n].cpu().clone(),
            "labels": self._label[:n].clone(),
            "payload_ids": self._payload[:n].clone(),
            "entry_ids": self._entry[:n].clone(),
            "sources": self._source[:n].clone(),
            "free_rows": torch.tensor(self._free, dtype=torch.int64),
            "next_entry": self._next_entry,
            "seen_stream": self._seen_stream,
            "n_external": self._n_external,
            "seen_class": {int(c): int(v) for c, v in self._seen_class.items()},
            "class_rows": {int(c): torch.tensor(r, dtype=torch.int64) for c, r in self._class_rows.items()},
            "stream_rows": torch.tensor(self._stream_rows, dtype=torch.int64),
            "rng_state": self._gen.get_state(),
            "indexes": {name: (self._indexes[i].state_dict() if keep_index else None)
                        for i, name in enumerate(SOURCES)},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the limits and seed are taken from the state."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported retrieval memory state version {state.get('version')!r}")
        cfg = state["config"]
        for key in ("dim", "backend", "metric"):
            if cfg[key] != getattr(self, key):
                raise ValueError(f"state was saved with {key}={cfg[key]!r}, this memory has {key}={getattr(self, key)!r}")
        self.per_class_cap, self.max_size, self.seed = cfg["per_class_cap"], cfg["max_size"], cfg["seed"]
        self.index_args = dict(cfg["index_args"])
        self.clear()
        self.encoder_tag = state["encoder_tag"]
        self._emb = state["embeddings"].to(self.device, torch.float32).clone()
        self._label, self._payload, self._entry = (state[k].to(torch.int64).clone()
                                                   for k in ("labels", "payload_ids", "entry_ids"))
        self._source = state["sources"].to(torch.int8).clone()
        self._n_rows = self._emb.shape[0]
        self._free = state["free_rows"].tolist()
        self._next_entry, self._seen_stream = int(state["next_entry"]), int(state["seen_stream"])
        self._n_external = int(state["n_external"])
        self._seen_class = {int(c): int(v) for c, v in state["seen_class"].items()}
        self._class_rows = {int(c): r.tolist() for c, r in state["class_rows"].items()}
        self._stream_rows = state["stream_rows"].tolist()
        self._gen.set_state(state["rng_state"])
        saved = state["indexes"]
        if all(saved[name] is not None for name in SOURCES):
            self._indexes = {i: VectorIndex.from_state_dict(saved[name], device=self.device)
                             for i, name in enumerate(SOURCES)}
        else:  # rebuild from the stored embeddings
            self._index_rows(self._alive().nonzero().squeeze(1))
