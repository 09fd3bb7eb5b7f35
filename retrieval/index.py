"""Vector search behind one interface: exact (torch) and FAISS flat / IVF / HNSW backends.

Every backend stores L2-normalised vectors for ``metric="cosine"`` (inner product of unit
vectors) and raw vectors for ``metric="ip"``; the index normalises added vectors and queries
itself. Ids are caller-chosen non-negative int64 (default: consecutive from a counter);
``-1`` and a score of ``-inf`` pad results where fewer than ``k`` vectors exist.

    index = create_index("hnsw", dim=512)
    ids = index.add(embeddings)                 # (N, 512) float -> (N,) int64
    scores, ids = index.search(queries, k=10)   # (B, 10) float32, (B, 10) int64

Files written by :meth:`VectorIndex.save` are one ``.npz`` (a JSON header plus arrays; FAISS
indexes as :func:`faiss.serialize_index` bytes) that loads without pickle.
"""

from __future__ import annotations

import abc
import inspect
import json
import math
import os
from typing import Any, ClassVar

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..streams.data import atomic_path

__all__ = [
    "INDEX_BACKENDS",
    "METRICS",
    "VectorIndex",
    "ExactIndex",
    "FaissFlatIndex",
    "FaissIVFIndex",
    "FaissHNSWIndex",
    "create_index",
]

METRICS = ("cosine", "ip")
INDEX_BACKENDS = ("exact", "flat", "ivf", "hnsw")
_FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- validation

def _allowed(names: tuple[str, ...] | list[str]) -> str:
    return ", ".join(repr(n) for n in names)


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an ``int``; TypeError / ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_metric(metric: Any) -> str:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: allowed {_allowed(METRICS)}")
    return metric


def as_float_matrix(x: Any, name: str, dim: int, owner: str = "index") -> Tensor:
    """``x`` (torch tensor or numpy array, (N, dim), any float dtype) as a float32 tensor.

    The tensor keeps its device; numpy arrays become CPU tensors (sharing memory when
    already float32, so callers must not modify the result in place).
    """
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, Tensor):
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (N, {dim}), got {tuple(x.shape)}")
    if x.shape[1] != dim:
        raise ValueError(f"dimension mismatch: {owner} has dim={dim}, {name} have {x.shape[1]}")
    return x.detach().to(torch.float32)


def as_id_array(ids: Any, name: str = "ids", n: int | None = None) -> np.ndarray:
    """``ids`` (tensor, array or sequence of ints) as a 1-D int64 numpy array of length ``n``."""
    if isinstance(ids, Tensor):
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise TypeError(f"{name} must be integers, got dtype {ids.dtype}")
        ids = ids.detach().cpu().numpy()
    arr = np.asarray(ids)
    if arr.size == 0:
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64).reshape(-1) if arr.ndim == 0 else arr.astype(np.int64)
    if arr.ndim != 1 or (n is not None and arr.shape[0] != n):
        want = f"({n},)" if n is not None else "(N,)"
        raise ValueError(f"{name} must have shape {want}, got {tuple(arr.shape)}")
    return arr


def _empty_result(b: int, k: int, device: torch.device) -> tuple[Tensor, Tensor]:
    return (torch.full((b, k), -math.inf, dtype=torch.float32, device=device),
            torch.full((b, k), -1, dtype=torch.int64, device=device))


# ----------------------------------------------------------------------------- interface

class VectorIndex(abc.ABC):
    """Nearest-neighbour search over ``dim``-dimensional float32 vectors with int64 ids.

    Args:
        dim: vector dimension (>= 1).
        metric: ``"cosine"`` (inner product of L2-normalised vectors; the index normalises
            added vectors and queries) or ``"ip"`` (raw inner product). Higher is better.
    """

    backend: ClassVar[str] = ""

    def __init__(self, dim: int, metric: str = "cosine") -> None:
        self._dim = check_int("dim", dim, 1)
        self._metric = check_metric(metric)
        self._ids = np.empty(0, np.int64)  # live ids (host copy: duplicate checks, len, save)
        self._next_id = 0

    # -- properties
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def metric(self) -> str:
        return self._metric

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self._dim}, metric={self._metric!r}, n={len(self)})"

    @property
    def ids(self) -> Tensor:
        """Live ids, (N,) int64 CPU tensor (a copy; order is backend-specific)."""
        return torch.from_numpy(self._ids.copy())

    @property
    @abc.abstractmethod
    def nbytes(self) -> int:
        """Bytes held by the stored vectors and index structures (see each backend)."""

    @property
    def bytes_per_vector(self) -> float:
        """``nbytes / len`` (bytes per stored vector, structures included); the backend's
        nominal per-vector cost while empty."""
        return self.nbytes / len(self) if len(self) else float(self._nominal_bytes_per_vector())

    def _nominal_bytes_per_vector(self) -> int:
        return 4 * self._dim + 16

    # -- public operations
    def add(self, vectors: Tensor | np.ndarray, ids: Any = None) -> Tensor:
        """Add ``vectors`` (N, dim), any float dtype (stored as float32).

        Args:
            ids: optional (N,) non-negative int64 ids; default consecutive from an internal
                counter (one past the largest id ever added).
        Returns:
            The ids used, (N,) int64 CPU tensor.
        Raises:
            ValueError: an id is negative, repeated, or already in the index.
        """
        x = self._normalise(as_float_matrix(vectors, "vectors", self._dim))
        n = x.shape[0]
        if ids is None:
            new = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        else:
            new = as_id_array(ids, "ids", n)
            if n and new.min() < 0:
                raise ValueError(f"ids must be non-negative (-1 marks padding), got {int(new.min())}")
            if np.unique(new).shape[0] != n:
                raise ValueError("ids must be unique, got repeated ids")
            dup = new[np.isin(new, self._ids)]
            if dup.size:
                raise ValueError(f"ids already in the index: {dup[:5].tolist()}"
                                 f"{' ...' if dup.size > 5 else ''}; remove them first")
        if n == 0:
            return torch.from_numpy(new)
        self._add(x, new)
        self._ids = np.concatenate([self._ids, new])
        self._next_id = max(self._next_id, int(new.max()) + 1)
        return torch.from_numpy(new)

    def search(self, queries: Tensor | np.ndarray, k: int) -> tuple[Tensor, Tensor]:
        """The ``k`` best vectors for each query, best first.

        Args:
            queries: (B, dim), any float dtype.
            k: number of neighbours (>= 1).
        Returns:
            ``(scores, ids)``: (B, k) float32 and (B, k) int64, on the queries' device for a
            torch tensor (CPU for numpy). Where fewer than ``k`` vectors exist (or an
            approximate backend finds fewer) ids are -1 and scores -inf.
        """
        k = check_int("k", k, 1)
        out = queries.device if isinstance(queries, Tensor) else torch.device("cpu")
        q = self._normalise(as_float_matrix(queries, "queries", self._dim))
        if len(self) == 0 or q.shape[0] == 0:
            return _empty_result(q.shape[0], k, out)
        scores, ids = self._search(q, k)
        return scores.to(out), ids.to(out)

    def remove(self, ids: Any) -> int:
        """Remove the vectors with these ids; unknown ids are ignored. Returns how many went."""
        ids = as_id_array(ids)
        hit = np.isin(self._ids, ids)
        if not hit.any():
            return 0
        gone = self._ids[hit]
        self._remove(gone)
        self._ids = self._ids[~hit]
        return int(gone.shape[0])

    def reset(self) -> None:
        """Back to the freshly constructed state: no vectors, id counter at 0."""
        self._ids = np.empty(0, np.int64)
        self._next_id = 0
        self._reset()

    # -- persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this index exactly: tensors and plain Python data."""
        return {"format": _FORMAT_VERSION, "backend": self.backend, "dim": self._dim,
                "metric": self._metric, "args": self._args(), "next_id": self._next_id,
                "ids": torch.from_numpy(self._ids.copy()), **self._state()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], **overrides: Any) -> "VectorIndex":
        """Rebuild an index from :meth:`state_dict`; ``overrides`` replace constructor
        arguments (e.g. ``device="cpu"`` for an index saved on a GPU)."""
        backend = state.get("backend")
        if backend not in _BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: allowed {_allowed(INDEX_BACKENDS)}")
        klass = _BACKENDS[backend]
        if cls is not VectorIndex and not issubclass(klass, cls):
            raise ValueError(f"state holds a {backend!r} index, not a {cls.__name__}")
        index = klass(state["dim"], state["metric"], **{**state["args"], **overrides})
        index._ids = np.asarray(state["ids"].numpy() if isinstance(state["ids"], Tensor) else state["ids"],
                                dtype=np.int64).copy()
        index._next_id = int(state["next_id"])
        index._load_state(state)
        return index

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to one ``.npz`` file (atomically): a JSON header (backend, dim,
        metric, args, id counter) plus arrays (ids, vectors or FAISS index bytes)."""
        state = self.state_dict()
        header = {k: v for k, v in state.items() if not isinstance(v, Tensor)}
        arrays = {k: v.cpu().numpy() for k, v in state.items() if isinstance(v, Tensor)}
        arrays["header"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)  # a file object: numpy adds no ".npz" to the name

    @classmethod
    def load(cls, path: str | os.PathLike, **overrides: Any) -> "VectorIndex":
        """Read a file written by :meth:`save` (no pickle involved)."""
        with np.load(path, allow_pickle=False) as data:
            state = json.loads(data["header"].tobytes().decode("utf-8"))
            if state.get("format") != _FORMAT_VERSION:
                raise ValueError(f"{os.fspath(path)}: unsupported index file format {state.get('format')!r}")
            state.update({k: torch.from_numpy(data[k].copy()) for k in data.files if k != "header"})
        return cls.from_state_dict(state, **overrides)

    # -- backend hooks
    def _normalise(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1) if self._metric == "cosine" else x

    @abc.abstractmethod
    def _args(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def _add(self, x: Tensor, ids: np.ndarray) -> None: ...

    @abc.abstractmethod
    def _search(self, q: Tensor, k: int) -> tuple[Tensor, Tensor]: ...

    @abc.abstractmethod
    def _remove(self, ids: np.ndarray) -> None: ...

    @abc.abstractmethod
    def _reset(self) -> None: ...

    @abc.abstractmethod
    def _state(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def _load_state(self, state: dict[str, Any]) -> None: ...


# ----------------------------------------------------------------------------- exact (torch)

class ExactIndex(VectorIndex):
    """Brute-force search with torch matrix products (CPU or CUDA).

    Vectors live in one float32 (capacity, dim) tensor on ``device`` that grows by
    doubling, so many small adds stay cheap. Queries are processed ``batch_size`` at a
    time against blocks of ``block_size`` stored rows, keeping each score matrix at most
    ``batch_size x block_size`` floats (default block: 128 MiB of scores); the per-block
    top-k are merged with another top-k. Removal fills the holes with the last rows
    (O(removed), order not preserved).

    ``nbytes`` = allocated vector buffer (capacity x dim x 4) + device id buffer
    (capacity x 8) + host id copy (N x 8).
    """

    backend = "exact"

    def __init__(self, dim: int, metric: str = "cosine", device: str | torch.device = "cpu",
                 batch_size: int = 1024, block_size: int | None = None) -> None:
        super().__init__(dim, metric)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {str(self.device)!r} requested but CUDA is not available")
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.block_size = None if block_size is None else check_int("block_size", block_size, 1)
        self._reset()

    def _args(self) -> dict[str, Any]:
        return {"device": str(self.device), "batch_size": self.batch_size, "block_size": self.block_size}

    @property
    def nbytes(self) -> int:
        return self._x.nbytes + self._pos_ids.nbytes + self._ids.nbytes

    def _reset(self) -> None:
        self._x = torch.empty(0, self._dim, dtype=torch.float32, device=self.device)
        self._pos_ids = torch.empty(0, dtype=torch.int64, device=self.device)  # id of each row
        self._n = 0

    def _add(self, x: Tensor, ids: np.ndarray) -> None:
        n_new = self._n + x.shape[0]
        if n_new > self._x.shape[0]:
            cap = max(n_new, 2 * self._x.shape[0])
            grown = torch.empty(cap, self._dim, dtype=torch.float32, device=self.device)
            grown[: self._n] = self._x[: self._n]
            gids = torch.empty(cap, dtype=torch.int64, device=self.device)
            gids[: self._n] = self._pos_ids[: self._n]
            self._x, self._pos_ids = grown, gids
        self._x[self._n : n_new] = x.to(self.device)
        self._pos_ids[self._n : n_new] = torch.from_numpy(ids).to(self.device)
        self._n = n_new

    def _remove(self, ids: np.ndarray) -> None:
        dead = torch.isin(self._pos_ids[: self._n], torch.from_numpy(ids).to(self.device))
        n_new = self._n - int(dead.sum())
        holes = dead[:n_new].nonzero().squeeze(1)
        movers = (~dead[n_new:]).nonzero().squeeze(1) + n_new  # as many as holes
        self._x[holes] = self._x[movers]
        self._pos_ids[holes] = self._pos_ids[movers]
        self._n = n_new

    def _search(self, q: Tensor, k: int) -> tuple[Tensor, Tensor]:
        q = q.to(self.device)
        x = self._x[: self._n]
        kk = min(k, self._n)
        scores_out, ids_out = _empty_result(q.shape[0], k, self.device)
        for s in range(0, q.shape[0], self.batch_size):
            qc = q[s : s + self.batch_size]
            block = self.block_size or max(1, (1 << 25) // qc.shape[0])
            best_v = best_i = None
            for b in range(0, self._n, block):
                v, i = torch.topk(qc @ x[b : b + block].T, min(kk, x[b : b + block].shape[0]), dim=1)
                i = i + b
                if best_v is not None:  # merge with the best so far
                    both = torch.cat([best_v, v], 1)
                    v, j = torch.topk(both, min(kk, both.shape[1]), dim=1)
                    i = torch.gather(torch.cat([best_i, i], 1), 1, j)
                best_v, best_i = v, i
            scores_out[s : s + qc.shape[0], :kk] = best_v
            ids_out[s : s + qc.shape[0], :kk] = self._pos_ids[best_i]
        return scores_out, ids_out

    def _state(self) -> dict[str, Any]:
        return {"vectors": self._x[: self._n].cpu().clone(), "vector_ids": self._pos_ids[: self._n].cpu().clone()}

    def _load_state(self, state: dict[str, Any]) -> None:
        # stored vectors are already normalised: copy them as they are (bit-exact round trip)
        self._x = state["vectors"].to(self.device, torch.float32).clone()
        self._pos_ids = state["vector_ids"].to(self.device, torch.int64).clone()
        self._n = self._x.shape[0]
        self._ids = self._pos_ids.cpu().numpy().copy()


# ----------------------------------------------------------------------------- FAISS

def _np(x: Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.cpu().numpy(), dtype=np.float32)


def _faiss_result(d: np.ndarray, i: np.ndarray) -> tuple[Tensor, Tensor]:
    scores = torch.from_numpy(d.astype(np.float32, copy=False))
    ids = torch.from_numpy(i.astype(np.int64, copy=False))
    scores[ids < 0] = -math.inf  # faiss pads with -FLT_MAX (IP); make padding explicit
    return scores, ids


class _FaissIndex(VectorIndex):
    """Shared FAISS plumbing: the CPU index is the source of truth for adds and removals.

    With faiss-gpu (``faiss.get_num_gpus() > 0``) and a CUDA ``device``, searches run on a
    GPU copy made lazily from the CPU index and dropped on every change; otherwise (and
    always for HNSW, which FAISS has no GPU version of) searches run on the CPU index.
    """

    _gpu_capable: ClassVar[bool] = True

    def __init__(self, dim: int, metric: str = "cosine", device: str | torch.device = "cpu") -> None:
        super().__init__(dim, metric)
        self.device = torch.device(device)
        self._gpu: Any = None
        self._gpu_res: Any = None

    def _searcher(self, index: Any) -> Any:
        if not (self._gpu_capable and self.device.type == "cuda" and faiss.get_num_gpus() > 0):
            return index
        if self._gpu is None:
            self._gpu_res = faiss.StandardGpuResources()
            self._gpu = faiss.index_cpu_to_gpu(self._gpu_res, self.device.index or 0, index)
        return self._gpu

    def _changed(self) -> None:
        self._gpu = None


class FaissFlatIndex(_FaissIndex):
    """Exact search with FAISS: ``IndexFlatIP`` wrapped in ``IndexIDMap2`` (ids, removal).

    ``nbytes`` = N x (4·dim vector + 8 id-map entry + 16 reverse-map key/value + 8 host id);
    the reverse map's hash-table overhead is not counted.
    """

    backend = "flat"

    def __init__(self, dim: int, metric: str = "cosine", device: str | torch.device = "cpu") -> None:
        super().__init__(dim, metric, device)
        self._reset()

    def _args(self) -> dict[str, Any]:
        return {"device": str(self.device)}

    def _nominal_bytes_per_vector(self) -> int:
        return 4 * self._dim + 32

    @property
    def nbytes(self) -> int:
        return int(self._index.ntotal) * (4 * self._dim + 24) + self._ids.nbytes

    def _reset(self) -> None:
        self._flat = faiss.IndexFlatIP(self._dim)  # referenced here: the id map does not own it
        self._index = faiss.IndexIDMap2(self._flat)
        self._changed()

    def _add(self, x: Tensor, ids: np.ndarray) -> None:
        self._index.add_with_ids(_np(x), ids)
        self._changed()

    def _search(self, q: Tensor, k: int) -> tuple[Tensor, Tensor]:
        return _faiss_result(*self._searcher(self._index).search(_np(q), k))

    def _remove(self, ids: np.ndarray) -> None:
        self._index.remove_ids(ids)
        self._changed()

    def _state(self) -> dict[str, Any]:
        return {"faiss": torch.from_numpy(faiss.serialize_index(self._index))}

    def _load_state(self, state: dict[str, Any]) -> None:
        self._index = faiss.deserialize_index(state["faiss"].numpy())
        self._flat = None  # the deserialised id map owns its flat index
        self._changed()


class FaissIVFIndex(_FaissIndex):
    """Inverted-file search (``IndexIVFFlat``, inner product): probes ``nprobe`` of ``nlist``
    k-means cells per query.

    Training rule: IVF needs k-means centroids. Until the index is trained, added vectors
    wait in an exact staging index (an ``IndexIDMap2(IndexFlatIP)``) that searches answer
    from, so small indexes work and are exact. Training runs automatically on the ``add``
    that brings the count to ``train_size`` vectors (default ``39 * nlist`` when ``nlist``
    is given, else 10,000: FAISS wants >= 39 training points per cell), or explicitly with
    :meth:`train`. With ``nlist=None`` it is chosen at training time as
    ``round(4 * sqrt(N))``, capped at ``N // 39``. k-means uses ``niter`` iterations on at
    most ``points_per_list * nlist`` sampled points, seeded with ``seed`` (deterministic).
    The cells are fixed after training: after the index has grown far beyond its training
    size, rebuild it for good recall.

    ``nbytes`` = N x (4·dim code + 8 list id + 8 host id) + nlist x 4·dim (centroids);
    before training, the staging index's cost (see :class:`FaissFlatIndex`).
    """

    backend = "ivf"

    def __init__(self, dim: int, metric: str = "cosine", nlist: int | None = None, nprobe: int = 16,
                 train_size: int | None = None, niter: int = 10, points_per_list: int = 64,
                 seed: int = 1234, device: str | torch.device = "cpu") -> None:
        super().__init__(dim, metric, device)
        self.nlist_arg = None if nlist is None else check_int("nlist", nlist, 1)
        self._nprobe = check_int("nprobe", nprobe, 1)
        self.train_size = None if train_size is None else check_int("train_size", train_size, 1)
        self.niter = check_int("niter", niter, 1)
        self.points_per_list = check_int("points_per_list", points_per_list, 1)
        self.seed = check_int("seed", seed, 0)
        self._reset()

    def _args(self) -> dict[str, Any]:
        return {"nlist": self.nlist_arg, "nprobe": self._nprobe, "train_size": self.train_size,
                "niter": self.niter, "points_per_list": self.points_per_list, "seed": self.seed,
                "device": str(self.device)}

    @property
    def is_trained(self) -> bool:
        return self._ivf is not None

    @property
    def nlist(self) -> int | None:
        """Number of cells: the trained value, else the ``nlist`` argument (None = automatic)."""
        return int(self._ivf.nlist) if self._ivf is not None else self.nlist_arg

    @property
    def nprobe(self) -> int:
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self._nprobe = check_int("nprobe", value, 1)
        if self._ivf is not None:
            self._ivf.nprobe = min(self._nprobe, self._ivf.nlist)
        self._changed()

    @property
    def train_threshold(self) -> int:
        """Vector count at which ``add`` trains automatically."""
        if self.train_size is not None:
            return self.train_size
        return 39 * self.nlist_arg if self.nlist_arg is not None else 10_000

    def _nominal_bytes_per_vector(self) -> int:
        return 4 * self._dim + 16

    @property
    def nbytes(self) -> int:
        if self._ivf is None:
            return int(self._staging.ntotal) * (4 * self._dim + 24) + self._ids.nbytes
        return (int(self._ivf.ntotal) * (4 * self._dim + 8) + int(self._ivf.nlist) * 4 * self._dim
                + self._ids.nbytes)

    def _reset(self) -> None:
        self._staging_flat = faiss.IndexFlatIP(self._dim)
        self._staging = faiss.IndexIDMap2(self._staging_flat)
        self._ivf = self._quantizer = None
        self._changed()

    def train(self, vectors: Tensor | np.ndarray | None = None) -> None:
        """Train the cells now on ``vectors`` (M, dim) (not added), or on the staged vectors
        when None; staged vectors then move into the trained index."""
        if self._ivf is not None:
            raise ValueError("IVF index is already trained; call reset() to start over")
        staged, staged_ids = self._staged()
        x = staged if vectors is None else _np(self._normalise(as_float_matrix(vectors, "vectors", self._dim)))
        self._build(x, staged, staged_ids)

    def _build(self, train_x: np.ndarray, add_x: np.ndarray, add_ids: np.ndarray) -> None:
        """Train the cells on ``train_x`` (normalised), then fill with ``add_x`` / ``add_ids``."""
        n = max(train_x.shape[0], add_x.shape[0])
        nlist = self.nlist_arg or int(min(max(1, round(4 * math.sqrt(n))), max(1, n // 39)))
        if train_x.shape[0] < nlist:
            raise ValueError(f"IVF training needs at least nlist={nlist} vectors, got {train_x.shape[0]}")
        quantizer = faiss.IndexFlatIP(self._dim)
        ivf = faiss.IndexIVFFlat(quantizer, self._dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.niter, ivf.cp.seed = self.niter, self.seed
        ivf.cp.max_points_per_centroid = self.points_per_list  # FAISS subsamples above this
        ivf.cp.spherical = True  # unit centroids for inner-product assignment
        ivf.train(train_x)
        ivf.nprobe = min(self._nprobe, nlist)
        if add_x.shape[0]:
            ivf.add_with_ids(add_x, add_ids)
        self._quantizer, self._ivf = quantizer, ivf
        self._staging = self._staging_flat = None
        self._changed()

    def _staged(self) -> tuple[np.ndarray, np.ndarray]:
        n = int(self._staging.ntotal)
        x = self._staging.index.reconstruct_n(0, n) if n else np.empty((0, self._dim), np.float32)
        return x, faiss.vector_to_array(self._staging.id_map).astype(np.int64)  # same order

    def _current(self) -> Any:
        return self._ivf if self._ivf is not None else self._staging

    def _add(self, x: Tensor, ids: np.ndarray) -> None:
        if self._ivf is None and self._staging.ntotal + x.shape[0] >= self.train_threshold:
            # train on staged + new vectors directly (no detour through the staging index)
            staged, staged_ids = self._staged()
            x_all = np.concatenate([staged, _np(x)]) if staged.shape[0] else _np(x)
            self._build(x_all, x_all, np.concatenate([staged_ids, ids]))
        else:
            self._current().add_with_ids(_np(x), ids)
        self._changed()

    def _search(self, q: Tensor, k: int) -> tuple[Tensor, Tensor]:
        return _faiss_result(*self._searcher(self._current()).search(_np(q), k))

    def _remove(self, ids: np.ndarray) -> None:
        self._current().remove_ids(ids)
        self._changed()

    def _state(self) -> dict[str, Any]:
        return {"faiss": torch.from_numpy(faiss.serialize_index(self._current())),
                "trained": self._ivf is not None}

    def _load_state(self, state: dict[str, Any]) -> None:
        index = faiss.deserialize_index(state["faiss"].numpy())
        if state["trained"]:
            self._ivf, self._quantizer = index, None  # the deserialised IVF owns its quantizer
            self._ivf.nprobe = min(self._nprobe, self._ivf.nlist)
            self._staging = self._staging_flat = None
        else:
            self._staging, self._staging_flat = index, None
        self._changed()


class FaissHNSWIndex(_FaissIndex):
    """Graph search (``IndexHNSWFlat``, inner product), CPU only (FAISS has no GPU HNSW).

    ``M`` neighbours per node (2·M on the base layer), ``ef_construction`` / ``ef_search``
    candidate-list sizes at build / query time (FAISS uses ``max(ef_search, k)``).

    Removal: FAISS HNSW cannot delete nodes, so removed vectors become tombstones. Searches
    pass a bitmap of live nodes to FAISS (``SearchParametersHNSW(sel=IDSelectorBitmap)``),
    which filters during the graph walk and so still returns ``k`` live results; the graph
    is rebuilt from the live vectors once tombstones exceed half of the nodes.

    ``nbytes`` = nodes x 4·dim (vectors) + the graph (neighbour lists x 4, levels x 4,
    offsets x 8, read from FAISS) + nodes x (8 node id + 1 live flag) + N x 8 (host ids).
    """

    backend = "hnsw"
    _gpu_capable = False

    def __init__(self, dim: int, metric: str = "cosine", M: int = 32, ef_construction: int = 80,
                 ef_search: int = 64, device: str | torch.device = "cpu") -> None:
        super().__init__(dim, metric, device)
        self.M = check_int("M", M, 2)
        self.ef_construction = check_int("ef_construction", ef_construction, 1)
        self._ef_search = check_int("ef_search", ef_search, 1)
        self._reset()

    def _args(self) -> dict[str, Any]:
        return {"M": self.M, "ef_construction": self.ef_construction, "ef_search": self._ef_search,
                "device": str(self.device)}

    @property
    def ef_search(self) -> int:
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self._ef_search = check_int("ef_search", value, 1)

    @property
    def n_tombstones(self) -> int:
        return int(self._node_ids.shape[0] - self._live.sum())

    def _nominal_bytes_per_vector(self) -> int:
        return 4 * self._dim + 4 * 2 * self.M + 8 + 8 + 1 + 8

    @property
    def nbytes(self) -> int:
        h = self._index.hnsw
        graph = h.neighbors.size() * 4 + h.levels.size() * 4 + h.offsets.size() * 8
        return (int(self._index.ntotal) * 4 * self._dim + graph + self._node_ids.nbytes
                + self._live.nbytes + self._ids.nbytes)

    def _new_graph(self) -> Any:
        index = faiss.IndexHNSWFlat(self._dim, self.M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        return index

    def _reset(self) -> None:
        self._index = self._new_graph()
        self._node_ids = np.empty(0, np.int64)  # id of each graph node (FAISS labels = node numbers)
        self._live = np.empty(0, bool)
        self._bitmap = self._selector = None  # live-node bitmap for FAISS, built on demand

    def _add(self, x: Tensor, ids: np.ndarray) -> None:
        self._index.add(_np(x))
        self._node_ids = np.concatenate([self._node_ids, ids])
        self._live = np.concatenate([self._live, np.ones(ids.shape[0], bool)])
        self._bitmap = self._selector = None

    def _remove(self, ids: np.ndarray) -> None:
        self._live &= ~np.isin(self._node_ids, ids)
        self._bitmap = self._selector = None
        if self.n_tombstones > self._node_ids.shape[0] // 2:
            self._rebuild()

    def _rebuild(self) -> None:
        n = int(self._index.ntotal)
        x = self._index.reconstruct_n(0, n)[self._live] if n else np.empty((0, self._dim), np.float32)
        ids = self._node_ids[self._live]
        self._reset()
        if ids.shape[0]:
            self._add(torch.from_numpy(x), ids)  # already normalised: add as stored

    def _search(self, q: Tensor, k: int) -> tuple[Tensor, Tensor]:
        params = faiss.SearchParametersHNSW()
        params.efSearch = self._ef_search
        if self.n_tombstones:
            if self._bitmap is None:
                self._bitmap = np.packbits(self._live, bitorder="little")
                self._selector = faiss.IDSelectorBitmap(self._live.shape[0], faiss.swig_ptr(self._bitmap))
            params.sel = self._selector  # self._bitmap / self._selector outlive the call
        scores, nodes = _faiss_result(*self._index.search(_np(q), k, params=params))
        found = nodes >= 0
        ids = torch.full_like(nodes, -1)
        ids[found] = torch.from_numpy(self._node_ids)[nodes[found]]
        return scores, ids

    def _state(self) -> dict[str, Any]:
        return {"faiss": torch.from_numpy(faiss.serialize_index(self._index)),
                "node_ids": torch.from_numpy(self._node_ids.copy()),
                "live": torch.from_numpy(self._live.copy())}

    def _load_state(self, state: dict[str, Any]) -> None:
        self._index = faiss.deserialize_index(state["faiss"].numpy())
        self._node_ids = state["node_ids"].numpy().astype(np.int64).copy()
        self._live = state["live"].numpy().astype(bool).copy()
        self._bitmap = self._selector = None


# ----------------------------------------------------------------------------- factory

_BACKENDS: dict[str, type[VectorIndex]] = {
    "exact": ExactIndex, "flat": FaissFlatIndex, "ivf": FaissIVFIndex, "hnsw": FaissHNSWIndex,
}


def create_index(backend: str, dim: int, metric: str = "cosine", **kwargs: Any) -> VectorIndex:
    """The one entry point: a new empty index.

    Args:
        backend: ``"exact"`` (:class:`ExactIndex`), ``"flat"`` (:class:`FaissFlatIndex`),
            ``"ivf"`` (:class:`FaissIVFIndex`) or ``"hnsw"`` (:class:`FaissHNSWIndex`).
        dim: vector dimension.
        metric: ``"cosine"`` or ``"ip"``.
        **kwargs: the backend's own arguments (e.g. ``device``, ``nprobe``, ``ef_search``).
    """
    if backend not in _BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: allowed {_allowed(INDEX_BACKENDS)}")
    klass = _BACKENDS[backend]
    allowed = [p for p in inspect.signature(klass.__init__).parameters if p not in ("self", "dim", "metric")]
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        raise TypeError(f"unknown argument {unknown[0]!r} for backend {backend!r}: allowed {_allowed(allowed)}")
    return klass(dim, metric, **kwargs)
