"""RAML for continual few-shot streams: prototypes + multi-view fusion over a retrieval memory."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..models.classifier import MASK_VALUE
from ..models.fusion import FUSIONS, MultiViewFusionHead
from ..retrieval import RetrievalMemory, StaleMemoryError
from ..streams.data import dataset_targets
from ..streams.episodes import few_shot_episodes
from ._features import (
    EvalFeatureCapture,
    eval_mode,
    extract_features,
    lower_features,
    select_parameters,
    split_features,
    support_prototypes,
    upper_features,
)
from ._session import training_session
from .prototype import PrototypeClassifierPlugin

__all__ = ["RetrievalAugmentedPlugin"]

_STATE_VERSION = 1


class RetrievalAugmentedPlugin(PrototypeClassifierPlugin):
    """Retrieval-augmented prototype classifier (RAML, Li et al. 2023; design partly ours).

    What follows the RAML paper and its official code: class prototypes are mean embeddings
    of the support (training) examples, encoded without retrieval; every query is paired
    with each of its ``k`` retrieved neighbours, one view per neighbour; a
    :class:`~avalanche_fscl.models.MultiViewFusionHead` lets the prototypes attend over each
    view and averages the per-view class scores; encoder and head are trained on episodes
    (N-way K-shot with queries, cross-entropy, no inner loop).

    What is ours (the paper is about text and has no continual setting):

    * Images and a continual stream. The retrieval memory
      (:class:`~avalanche_fscl.retrieval.RetrievalMemory`) holds the stream's own training
      examples (labelled, added after every session: a non-parametric memory that does not
      forget) and/or an external corpus given by the user (``external``: unlabelled for the
      stream, embedded once after the base session).
    * Episodic meta-training runs at the end of the base session (``after_training_exp`` of
      session 0), after the standard supervised training, like Meta-Baseline: it fine-tunes
      the encoder and trains the head on ``meta_episodes`` episodes of the base classes.
      During it the memory holds the base training set (+ the external corpus) embedded
      with BatchNorm in eval mode, re-embedded every ``refresh_every`` episodes (neighbour
      embeddings are constants between refreshes); a query never retrieves itself.
    * ``meta_params`` / ``meta_cache`` (ours, off by default): meta-train only the encoder's
      upper layers and run the episodes and the refreshes through them alone, on the lower
      layers' outputs for the base training set computed once (un-augmented inputs, BatchNorm
      in eval mode, as during meta-training anyway). An episode then costs what the upper
      layers cost (blocks 3-4 of Conv4 at 32 px: about a fifth of the whole network's
      multiply-adds), so more episodes fit the same base-session time. ``meta_cache_views``
      adds augmented versions of the cached set (drawn with the training transform): over the
      un-augmented set alone, longer meta-training over-fits the base classes (Tiny ImageNet's
      validation protocol: ``benchmarks/results/validation/summary.md``).
    * Then, as :class:`PrototypeClassifierPlugin` (which this class extends): the backbone is
      frozen and the classifier rows become the class prototypes; later sessions only add
      prototypes for their classes from their shots, and their examples to the memory.
    * Optionally (``label_views=True``), a labelled neighbour (from the stream) carries its
      class's prototype into its view, so the head can tell which class it belongs to.
    * Logits: ``prototype_weight * scale * cos(f, p_c)`` (the model's own cosine head
      over prototype rows) ``+ head(prototypes, f, neighbours)`` ``+ vote_weight * vote``,
      where ``vote[c]`` sums the cosine similarity of the neighbours labelled ``c`` (a
      similarity-weighted kNN vote); with ``balanced_vote=True`` each neighbour's vote is
      divided by how many examples of its class the memory holds (times the mean count), the
      kNN density estimate ``k_c / n_c`` for classes of unequal size (base classes store
      15-150 examples, novel ones 5), which a plain vote favours.
      ``fusion=None, prototype_weight=0, vote_weight=1, balanced_vote=False`` is the plain
      nearest-neighbour classifier (the ``knn`` strategy).

    Evaluation re-scores ``strategy.mb_output`` in ``after_eval_forward`` (features captured
    from the strategy's own forward). The memory remembers a fingerprint of the encoder it
    was embedded with; if the backbone has changed since (e.g. attached to a strategy that
    keeps training it), evaluation raises
    :class:`~avalanche_fscl.retrieval.StaleMemoryError`, unless ``reembed=True``: then the
    plugin keeps every stored example's input (``C x H x W`` float32 each; the external
    corpus is re-read from ``external``) and re-embeds the whole memory first.

    Needs an :class:`~avalanche_fscl.models.FSCILNet`-like model with a cosine head
    (``features``, ``weight``, ``set_class_weights``, ``active_classes``); any encoder with
    ``features(x) -> (B, D)`` works (a from-scratch backbone or a CLIP image tower).

    Args:
        k: neighbours retrieved per query (= views), >= 1.
        fusion: ``"mean"`` (RAML), ``"attention"`` (views weighted by query-neighbour
            similarity) or ``None`` (no fusion head).
        heads: attention heads of the fusion head.
        label_views: a labelled neighbour carries its class prototype into its view (ours;
            default ``False``: RAML's label-free views).
        prototype_weight: weight of the prototype logits (>= 0).
        vote_weight: weight of the kNN vote over labelled neighbours (>= 0).
        balanced_vote: divide each neighbour's vote by its class's count in the memory.
        external: an external corpus (items ``(x, ...)`` with ready-to-use tensors, no
            transform applied), or ``None``. Its labels are ignored (stored as -1).
        backend: the memory's index backend (``"exact"``, ``"flat"``, ``"ivf"``, ``"hnsw"``).
        per_class_cap: most stream examples kept per class (reservoir), ``None``: all.
        max_size: most entries in the memory (reservoir over stream entries), ``None``: no bound.
        index_args: extra arguments of the index backend (e.g. ``{"nprobe": 32}``).
        meta_episodes: episodes of meta-training at the end of the base session (0: none).
        meta_ways, meta_shots, meta_queries: N-way, K-shot, queries per class of an episode
            (ways are capped by the number of base classes).
        meta_lr: encoder learning rate (SGD, momentum 0.9, cosine decay over the episodes).
        head_lr: fusion head learning rate (Adam, cosine decay).
        train_encoder: fine-tune the encoder during meta-training (``False``: head only).
        meta_params: the encoder parameters meta-training updates: a module-name prefix
            (``"backbone.features.8"``), a list of prefixes or a predicate
            ``(name, param) -> bool``; ``None``: every backbone parameter.
        meta_cache: compute the layers below ``meta_params`` once and run the episodes
            (and the memory's refreshes) through the layers from ``meta_params`` up; needs
            ``meta_params`` that leave at least one layer with weights below them.
        meta_cache_views: with ``meta_cache``, versions of the base training set cached: the
            un-augmented one plus ``meta_cache_views - 1`` drawn with the training transform
            (augmentation); every episode image takes one of them at random. Memory: this
            many times the lower layers' output per image (Conv4 at 32 px: 16 KB).
        refresh_every: episodes between re-embeddings of the meta-training memory.
        reembed: re-embed the memory when the encoder changed (instead of an error).
        replace_base, freeze_after_base, batch_size: as :class:`PrototypeClassifierPlugin`.
        seed: seeds the episodes and the memory's reservoir.

    State (:meth:`state_dict`): the memory, the fusion head's weights, the prototype
    plugin's state, the stored inputs (``reembed=True``) and the encoder fingerprint.
    """

    def __init__(
        self,
        k: int = 5,
        fusion: str | None = "mean",
        heads: int = 4,
        label_views: bool = False,
        prototype_weight: float = 1.0,
        vote_weight: float = 1.0,
        balanced_vote: bool = True,
        external: Dataset | None = None,
        backend: str = "exact",
        per_class_cap: int | None = None,
        max_size: int | None = None,
        index_args: dict[str, Any] | None = None,
        meta_episodes: int = 300,
        meta_ways: int = 20,
        meta_shots: int = 5,
        meta_queries: int = 5,
        meta_lr: float = 0.01,
        head_lr: float = 1e-3,
        train_encoder: bool = True,
        meta_params: Any = None,
        meta_cache: bool = False,
        meta_cache_views: int = 1,
        refresh_every: int = 50,
        reembed: bool = False,
        replace_base: bool = True,
        freeze_after_base: bool = True,
        batch_size: int = 256,
        seed: int = 0,
    ):
        super().__init__(freeze_after_base=freeze_after_base, replace_base=replace_base, batch_size=batch_size)
        for name, v, lo in [("k", k, 1), ("heads", heads, 1), ("meta_episodes", meta_episodes, 0),
                            ("meta_ways", meta_ways, 2), ("meta_shots", meta_shots, 1),
                            ("meta_queries", meta_queries, 1), ("refresh_every", refresh_every, 1),
                            ("meta_cache_views", meta_cache_views, 1)]:
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if fusion is not None and fusion not in FUSIONS:
            raise ValueError(f"fusion={fusion!r}: allowed {', '.join(map(repr, FUSIONS))} or None")
        for name, v in [("prototype_weight", prototype_weight), ("vote_weight", vote_weight)]:
            if not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        for name, v in [("meta_lr", meta_lr), ("head_lr", head_lr)]:
            if not isinstance(v, (int, float)) or v <= 0:
                raise ValueError(f"{name} must be a number > 0, got {v!r}")
        if not isinstance(meta_cache, bool):
            raise ValueError(f"meta_cache must be True or False, got {meta_cache!r}")
        if isinstance(meta_params, str):
            meta_params = (meta_params,)
        if meta_params is not None and not callable(meta_params) and not (
                isinstance(meta_params, (list, tuple)) and meta_params and all(isinstance(q, str) for q in meta_params)):
            raise ValueError(f"meta_params must be None, a name prefix, a list of prefixes or a predicate, got {meta_params!r}")
        if meta_params is not None and not train_encoder:
            raise ValueError("meta_params needs train_encoder=True (it selects the encoder parameters to train)")
        if meta_cache_views > 1 and not meta_cache:
            raise ValueError(f"meta_cache_views={meta_cache_views} needs meta_cache=True")
        if meta_cache and meta_params is None:
            raise ValueError("meta_cache=True needs meta_params (the upper layers to train; the layers below are cached)")
        if fusion is None and prototype_weight == 0 and vote_weight == 0:
            raise ValueError("fusion=None with prototype_weight=0 and vote_weight=0 leaves no classifier")
        # the memory checks backend, caps and index arguments now, before any training
        RetrievalMemory(1, backend=backend, per_class_cap=per_class_cap, max_size=max_size,
                        index_args=index_args)
        self.k, self.fusion, self.heads, self.label_views = k, fusion, heads, bool(label_views)
        self.prototype_weight, self.vote_weight = float(prototype_weight), float(vote_weight)
        self.balanced_vote = bool(balanced_vote)
        self.external = external
        self.memory_args = dict(backend=backend, per_class_cap=per_class_cap, max_size=max_size,
                                index_args=index_args, seed=seed)
        self.meta_episodes, self.meta_ways, self.meta_shots, self.meta_queries = (
            meta_episodes, meta_ways, meta_shots, meta_queries)
        self.meta_lr, self.head_lr, self.train_encoder = meta_lr, head_lr, train_encoder
        self.meta_params, self.meta_cache, self.meta_cache_views = meta_params, meta_cache, meta_cache_views
        self.refresh_every, self.reembed, self.seed = refresh_every, reembed, seed
        self.head: MultiViewFusionHead | None = None
        self.memory: RetrievalMemory | None = None
        self.encoder_tag: str | None = None
        self.next_payload = 0  # payload ids: external corpus 0..E-1, then stream examples in order
        self.inputs: dict[int, Tensor] = {}  # payload id -> input, kept when reembed=True
        self.meta_done = False
        self._capture = EvalFeatureCapture()

    @property
    def uses_retrieval(self) -> bool:
        """Whether the classifier reads the memory (fusion head or kNN vote)."""
        return self.fusion is not None or self.vote_weight > 0

    # ------------------------------------------------------------------ training
    def after_training_exp(self, strategy, *args, **kwargs):
        model, device, exp = strategy.model, strategy.device, strategy.experience
        session = training_session(strategy)
        self._check_model(model)
        if session == 0 and not self.meta_done:
            dim = self._feature_dim(model, exp.dataset.eval(), device)
            if self.fusion is not None and self.head is None:
                torch.manual_seed(self.seed)
                self.head = MultiViewFusionHead(dim, heads=self.heads, fusion=self.fusion,
                                                labels=self.label_views).to(device)
            if self.meta_episodes:
                self._meta_train(model, exp, device)
            self.meta_done = True
        super().after_training_exp(strategy, *args, **kwargs)  # prototype rows, freeze
        self._to_device(device)
        if self.uses_retrieval:
            if self.memory is None:
                self.memory = RetrievalMemory(self._feature_dim(model, exp.dataset.eval(), device),
                                              device=str(device), **self.memory_args)
                self.encoder_tag = encoder_fingerprint(model)
                if self.external is not None:
                    self._add(model, self.external, device, source="external")
            self._check_encoder(model, device)
            self._add(model, exp.dataset.eval(), device, source="stream")

    def _add(self, model: nn.Module, dataset: Dataset, device, source: str) -> None:
        assert self.memory is not None
        feats, labels = extract_features(model, dataset, self.batch_size, device)
        payload = torch.arange(self.next_payload, self.next_payload + len(feats))
        self.next_payload += len(feats)
        if source == "external":
            labels = torch.full_like(labels, -1)
        self.memory.add(feats, labels, payload_ids=payload, source=source, encoder_tag=self.encoder_tag)
        if self.reembed and source == "stream":
            kept = set(self.memory.payload_ids().tolist())
            for j, p in enumerate(payload.tolist()):
                if p in kept:
                    self.inputs[p] = _item(dataset, j).cpu()
            self.inputs = {p: x for p, x in self.inputs.items() if p in kept}

    def _check_encoder(self, model: nn.Module, device) -> None:
        """Re-embed (``reembed=True``) or let the memory raise when the encoder changed."""
        tag = encoder_fingerprint(model)
        if tag == self.encoder_tag or self.memory is None:
            return
        if not self.reembed:
            raise StaleMemoryError(
                "RetrievalAugmentedPlugin: the encoder changed since the retrieval memory was embedded "
                f"(fingerprint {self.encoder_tag} -> {tag}); freeze it after the base session "
                "(freeze_after_base=True, no training in later sessions) or pass reembed=True")
        n_ext = len(self.external) if self.external is not None else 0

        def embed(payload_ids: Tensor) -> Tensor:
            xs = [_item(self.external, p) if p < n_ext else self.inputs[p] for p in payload_ids.tolist()]
            with eval_mode(model), torch.no_grad():
                return torch.cat([model.features(torch.stack(xs[i:i + self.batch_size]).to(device))
                                  for i in range(0, len(xs), self.batch_size)])

        self.memory.reembed(embed, tag)
        self.encoder_tag = tag

    # ---------------------------------------------------------------- evaluation
    def _to_device(self, device) -> None:
        """Move the head and the memory to ``device`` (after a resume they load on the CPU)."""
        if self.head is not None:
            self.head.to(device)
        if self.memory is not None and self.memory.device != torch.device(device):
            moved = RetrievalMemory(self.memory.dim, device=str(device), **self.memory_args)
            moved.load_state_dict(self.memory.state_dict())
            self.memory = moved

    def before_eval_exp(self, strategy, *args, **kwargs):
        self._to_device(strategy.device)
        if self.uses_retrieval:
            if self.memory is None or len(self.memory) == 0:
                raise ValueError(
                    "RetrievalAugmentedPlugin: the retrieval memory is empty at evaluation; it is filled "
                    "after each training experience (evaluate after training the base session)")
            self._check_encoder(strategy.model, strategy.device)

    def before_eval_forward(self, strategy, *args, **kwargs):
        if self.uses_retrieval:
            self._capture.start(strategy.model)

    def after_eval_forward(self, strategy, *args, **kwargs):
        if not self.uses_retrieval:
            return
        model = strategy.model
        feats = self._capture.stop(model, strategy.mb_x)
        n = int(model.active_classes)
        with torch.no_grad():
            protos = model.weight[:n]
            scores = self.scores(strategy.mb_output[:, :n], protos, feats, labels_to_columns=None)
        out = strategy.mb_output.new_full(strategy.mb_output.shape, MASK_VALUE)
        out[:, :n] = scores.to(out.dtype)
        strategy.mb_output = out

    def after_eval(self, strategy, *args, **kwargs):
        self._capture.stop()

    def scores(self, proto_logits: Tensor, prototypes: Tensor, feats: Tensor,
               labels_to_columns: Tensor | None, exclude_payload: Tensor | None = None,
               memory: RetrievalMemory | None = None, label_prototypes: Tensor | None = None) -> Tensor:
        """Class scores ``(B, C)`` of features ``(B, D)`` given prototypes ``(C, D)`` and their
        logits ``(B, C)``; ``labels_to_columns`` maps memory labels to columns (``None``:
        label ``c`` is column ``c``; -1: not a column); ``memory`` defaults to the plugin's;
        ``label_prototypes`` ``(L, D)``: prototypes indexed by memory label, carried into the
        views of labelled neighbours (default: ``prototypes``, indexed by column)."""
        out = self.prototype_weight * proto_logits.float()
        if not self.uses_retrieval:
            return out
        own = memory is None or memory is self.memory
        memory = self.memory if memory is None else memory
        assert memory is not None
        nb = memory.search(feats.detach(), self.k, exclude_payload=exclude_payload,
                           encoder_tag=self.encoder_tag if own else None)
        C, mask = prototypes.shape[0], nb.mask.to(feats.device)
        raw = torch.where(mask, nb.labels.to(feats.device), -1)
        labels = raw
        if labels_to_columns is not None:
            labels = torch.where(raw >= 0, labels_to_columns[raw.clamp_min(0)], raw)
        labels = torch.where(labels < C, labels, -1)
        if self.head is not None:
            tokens = labels if label_prototypes is None else raw
            out = out + self.head(prototypes, feats, nb.embeddings.to(feats.device), mask, tokens,
                                  label_prototypes).float()
        if self.vote_weight > 0:
            ok = labels >= 0
            vote = torch.zeros(len(feats), C + 1, device=feats.device)
            w = nb.scores.to(feats.device).float() * ok
            if self.balanced_vote:
                w = w * _inverse_class_frequency(memory, feats.device)[raw.clamp_min(0)]
            vote.scatter_add_(1, torch.where(ok, labels, C), w)
            out = out + self.vote_weight * vote[:, :C]
        return out

    # ----------------------------------------------------------- meta-training
    def _meta_names(self, model: nn.Module) -> list[str]:
        """The encoder parameters meta-training updates (``meta_params``; default the backbone)."""
        if not self.train_encoder:
            return []
        return select_parameters(model, self.meta_params or ("backbone",), "meta_params")

    def _meta_train(self, model: nn.Module, exp, device) -> None:
        """Episodic training of the encoder (``train_encoder``, ``meta_params``) and the fusion head."""
        classes = sorted(int(c) for c in exp.classes_in_this_experience)
        ways, shots = min(self.meta_ways, len(classes)), self.meta_shots
        episodes = few_shot_episodes(exp.dataset.train(), ways, shots, self.meta_queries,
                                     self.meta_episodes, seed=self.seed, classes=classes)
        eval_ds = exp.dataset.eval()
        # base training set labels as columns of the episode (built per episode)
        table = torch.full((max(classes) + 1,), -1, dtype=torch.long, device=device)
        params = dict(model.named_parameters())
        names = self._meta_names(model)
        enc = [params[n] for n in names]
        upper, cached, views = None, None, None
        if self.meta_cache and enc:
            split = split_features(model, names, argument="meta_cache")
            upper = split.upper
            cached = lower_features(split.lower, model, eval_ds, self.batch_size, device)
            views = tuple(c.new_empty((self.meta_cache_views, *c.shape)) for c in cached)  # each (views, N, ...)
            for v, c in zip(views, cached):
                v[0] = c
            for i in range(1, self.meta_cache_views):  # augmented versions, one at a time (peak: views + 1)
                for v, c in zip(views, lower_features(split.lower, model, exp.dataset.train(), self.batch_size, device)):
                    v[i] = c
            cached = tuple(v[0] for v in views)
            pick = torch.Generator().manual_seed(self.seed)
        support_y = torch.arange(ways).repeat_interleave(shots)
        query_y = torch.arange(ways).repeat_interleave(self.meta_queries)
        grads = {p: p.requires_grad for p in model.parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        for p in enc:
            p.requires_grad_(True)
        opts = []
        if enc:
            opts.append((torch.optim.SGD(enc, lr=self.meta_lr, momentum=0.9), self.meta_lr))
        if self.head is not None:
            opts.append((torch.optim.Adam(self.head.parameters(), lr=self.head_lr), self.head_lr))
        if not opts:
            return
        memory, class_means = None, None
        scale = float(getattr(model, "scale", 16.0))
        try:
            with eval_mode(model):  # BatchNorm statistics stay those of the supervised training
                for i in range(len(episodes)):
                    if self.uses_retrieval and (memory is None or (enc and i % self.refresh_every == 0)):
                        if cached is None:
                            feats, labels = extract_features(model, eval_ds, self.batch_size, device)
                        else:
                            feats = upper_features(upper, model, cached, self.batch_size)
                            labels = torch.as_tensor(dataset_targets(eval_ds))
                        memory, class_means = self._episode_memory(model, feats, labels, device, len(table))
                    cls_i, idx = episodes.indices(i)
                    if cached is None:
                        ep = episodes[i]
                        f = model.features(torch.cat([ep.support_x, ep.query_x]).to(device))
                    else:  # the episode's rows of the cached lower outputs, support then queries, class-major
                        rows = torch.from_numpy(np.concatenate([idx[:, :shots].ravel(), idx[:, shots:].ravel()]))
                        view = torch.randint(len(views[0]), (len(rows),), generator=pick)
                        f = upper(*(v[view.to(v.device), rows.to(v.device)] for v in views))
                    fs, fq = f[: len(support_y)], f[len(support_y):]
                    protos = support_prototypes(fs, support_y.to(device), ways)
                    proto_logits = scale * F.normalize(fq.float(), dim=1) @ protos.T
                    table.fill_(-1)
                    table[torch.tensor(cls_i, device=device)] = torch.arange(ways, device=device)
                    logits = self.scores(proto_logits, protos, fq.float(), table, memory=memory,
                                         exclude_payload=torch.from_numpy(idx[:, shots:].ravel()),
                                         label_prototypes=class_means if self.uses_retrieval else None)
                    loss = F.cross_entropy(logits, query_y.to(device))
                    for opt, lr in opts:
                        for g in opt.param_groups:
                            g["lr"] = 0.5 * lr * (1 + math.cos(math.pi * i / len(episodes)))
                        opt.zero_grad(set_to_none=True)
                    loss.backward()
                    for opt, _ in opts:
                        opt.step()
        finally:
            for p, g in grads.items():
                p.requires_grad_(g)
                p.grad = None

    def _episode_memory(self, model: nn.Module, feats: Tensor, labels: Tensor, device, n_labels: int
                        ) -> tuple[RetrievalMemory, Tensor]:
        """The base training set's embeddings ``feats`` (payload = dataset index) + the external
        corpus (after it), and the normalised mean embedding ``(n_labels, D)`` of every base
        class (the prototypes that labelled neighbours carry into their views, as at evaluation)."""
        labels = labels.to(feats.device)
        means = torch.zeros(n_labels, feats.shape[1], device=feats.device).index_add_(0, labels.long(), feats.float())
        memory = RetrievalMemory(feats.shape[1], device=str(device), backend="exact", seed=self.seed)
        memory.add(feats, labels, payload_ids=torch.arange(len(feats)))
        if self.external is not None:
            ext, _ = extract_features(model, self.external, self.batch_size, device)
            memory.add(ext, torch.full((len(ext),), -1), payload_ids=torch.arange(len(feats), len(feats) + len(ext)),
                       source="external")
        return memory, F.normalize(means, dim=1)

    def _feature_dim(self, model: nn.Module, dataset: Dataset, device) -> int:
        with eval_mode(model), torch.no_grad():
            return int(model.features(_item(dataset, 0).unsqueeze(0).to(device)).shape[1])

    def _check_model(self, model: nn.Module) -> None:
        super()._check_model(model)
        missing = [a for a in ("weight", "active_classes") if not hasattr(model, a)]
        if missing:
            raise TypeError(f"RetrievalAugmentedPlugin needs an FSCILNet-like model; {type(model).__name__} lacks {missing}")
        if self.meta_episodes and not self.meta_done:  # fail before the base training, not after
            names = self._meta_names(model)
            if self.meta_cache and names:
                split_features(model, names, argument="meta_cache")

    # ---------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Memory, head weights, prototype state, stored inputs, encoder fingerprint."""
        return {
            "version": _STATE_VERSION,
            "prototype": super().state_dict(),
            "memory": None if self.memory is None else self.memory.state_dict(),
            "head": None if self.head is None else {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()},
            "head_dim": None if self.head is None else self.head.dim,
            "encoder_tag": self.encoder_tag,
            "next_payload": self.next_payload,
            "inputs_ids": sorted(self.inputs),
            "inputs": torch.stack([self.inputs[p] for p in sorted(self.inputs)]) if self.inputs else None,
            "meta_done": self.meta_done,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (tensors come back on the CPU and move at first use)."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported RetrievalAugmentedPlugin state version {state.get('version')!r}")
        super().load_state_dict(state["prototype"])
        self.memory = None
        if state["memory"] is not None:
            self.memory = RetrievalMemory(int(state["memory"]["config"]["dim"]), **self.memory_args)
            self.memory.load_state_dict(state["memory"])
        self.head = None
        if state["head"] is not None:
            self.head = MultiViewFusionHead(int(state["head_dim"]), heads=self.heads, fusion=self.fusion or "mean",
                                            labels=self.label_views)
            self.head.load_state_dict(state["head"])
        self.encoder_tag = state["encoder_tag"]
        self.next_payload = int(state["next_payload"])
        ids = state["inputs_ids"]
        self.inputs = {} if state["inputs"] is None else dict(zip(ids, state["inputs"]))
        self.meta_done = bool(state["meta_done"])


def encoder_fingerprint(model: nn.Module) -> str:
    """A short hash of the backbone's parameters and buffers (of ``model`` if it has none)."""
    net = getattr(model, "backbone", model)
    h = hashlib.sha1()
    with torch.no_grad():
        for name, t in list(net.named_parameters()) + list(net.named_buffers()):
            t = t.detach().double()
            h.update(name.encode())
            h.update(torch.stack([t.sum(), (t * t).sum()]).cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _inverse_class_frequency(memory: RetrievalMemory, device) -> Tensor:
    """``(max label + 1,)``: mean class count / count of each label in ``memory`` (0 if absent)."""
    counts = memory.counts_per_class()
    table = torch.zeros(max(counts, default=0) + 1, device=device)
    if counts:
        n = torch.tensor(list(counts.values()), dtype=torch.float, device=device)
        table[torch.tensor(list(counts), device=device)] = n.mean() / n
    return table


def _item(dataset: Any, i: int) -> Tensor:
    return torch.as_tensor(dataset[int(i)][0])
