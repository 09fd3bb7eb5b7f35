"""Batched feature extraction shared by the classifier plugins (NCM, prototypes).

The model must expose ``features(x) -> (B, D)`` (as :class:`~avalanche_fscl.models.FSCILNet`
does). Every function runs under ``torch.no_grad`` with the model in eval mode (BatchNorm
statistics are not touched) and restores each module's previous train/eval mode afterwards.
Datasets are read in order (no shuffling, no global RNG use) with their current transform
group: pass ``dataset.eval()`` for un-augmented features.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx.passes.split_module import split_module
from torch.utils.data import DataLoader, Dataset

__all__ = ["eval_mode", "extract_features", "class_mean_features", "support_prototypes", "EvalFeatureCapture",
           "FeatureSplit", "split_features", "lower_features", "upper_features", "select_parameters"]

_MISSING = object()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and restore every submodule's mode on exit."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def support_prototypes(support: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Unit-norm class prototypes ``(ways, D)`` (float32) of an episode's support features
    ``(S, D)`` with labels ``(S,)`` in ``[0, ways)``: the normalised class sums, i.e. the
    directions of the class means (the cosine-prototype head of FSCL's and RAML's episodes)."""
    sums = torch.zeros(ways, support.shape[1], device=support.device).index_add_(0, labels, support.float())
    return F.normalize(sums, dim=1)


def _batches(dataset: Dataset, batch_size: int, device) -> Iterator[tuple[Tensor, Tensor]]:
    """``(x, y)`` batches of ``dataset`` in order, on ``device`` (items ``(x, y, ...)``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=getattr(dataset, "collate_fn", None),
    )
    for batch in loader:
        yield batch[0].to(device), torch.as_tensor(batch[1]).to(device)


def extract_features(
    model: nn.Module, dataset: Dataset, batch_size: int, device: str | torch.device
) -> tuple[Tensor, Tensor]:
    """Features ``(N, D)`` and labels ``(N,)`` of every item of ``dataset``, in order."""
    feats, labels = [], []
    with eval_mode(model), torch.no_grad():
        for x, y in _batches(dataset, batch_size, device):
            feats.append(model.features(x))
            labels.append(y)
    if not feats:
        raise ValueError("extract_features: the dataset is empty")
    return torch.cat(feats), torch.cat(labels)


def class_mean_features(
    model: nn.Module,
    dataset: Dataset,
    classes: Sequence[int],
    batch_size: int,
    device: str | torch.device,
    normalize_features: bool = False,
) -> Tensor:
    """Mean feature ``(K, D)`` of each class of ``classes`` (row ``k`` = ``classes[k]``).

    Accumulated batch by batch (memory ``O(K * D)``); samples of other classes are ignored.

    Args:
        model: has ``features(x) -> (B, D)``.
        dataset: items ``(x, y, ...)``.
        classes: class ids whose means are wanted.
        batch_size: feature-extraction batch size.
        device: where the model is (the result lives there too).
        normalize_features: L2-normalise each feature before averaging (iCaRL's NCM);
            the returned means are *not* normalised either way.

    Raises:
        ValueError: a class of ``classes`` has no sample in ``dataset``.
    """
    with eval_mode(model), torch.no_grad():
        batches = ((model.features(x), y) for x, y in _batches(dataset, batch_size, device))
        return class_means(batches, classes, device, normalize_features)


def class_means(
    batches: Iterable[tuple[Tensor, Tensor]],
    classes: Sequence[int],
    device: str | torch.device,
    normalize_features: bool = False,
) -> Tensor:
    """Mean ``(K, D)`` of the features of each class of ``classes`` over ``(features (B, D),
    labels (B,))`` batches, accumulated in fp32 batch by batch (the same batches give the same
    bits as :func:`class_mean_features`); samples of other classes are ignored.

    Raises:
        ValueError: ``classes`` not distinct ids >= 0, or a class without a sample.
    """
    classes = [int(c) for c in classes]
    if not classes or min(classes) < 0 or len(set(classes)) != len(classes):
        raise ValueError(f"class_mean_features: classes must be distinct ids >= 0, got {classes[:10]}")
    sums: Tensor | None = None
    counts = torch.zeros(len(classes), dtype=torch.long, device=device)
    # class id -> row; ids outside `classes` map to -1 and are dropped
    table = torch.full((max(classes) + 1,), -1, dtype=torch.long, device=device)
    table[torch.tensor(classes, device=device)] = torch.arange(len(classes), device=device)
    for f, y in batches:
        f = f.float()  # accumulate in fp32 (AMP features)
        if normalize_features:
            f = F.normalize(f, dim=1)
        if sums is None:
            sums = f.new_zeros(len(classes), f.shape[1])
        y = y.long()
        rows = torch.where((y >= 0) & (y < len(table)), table[y.clamp(0, len(table) - 1)], -1)
        keep = rows >= 0
        sums.index_add_(0, rows[keep], f[keep])
        counts += torch.bincount(rows[keep], minlength=len(classes))
    missing = [c for c, n in zip(classes, counts.tolist()) if n == 0]
    if missing:
        raise ValueError(f"class_mean_features: no samples of classes {missing[:10]} in the dataset")
    assert sums is not None
    return sums / counts.unsqueeze(1).to(sums.dtype)


class _Features(nn.Module):
    """``model.features`` as a module (for ``torch.func.functional_call`` and ``torch.fx``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.m = model

    def forward(self, x: Tensor) -> Tensor:
        return self.m.features(x)


class FeatureSplit(NamedTuple):
    """``model.features`` cut in two: ``upper(*lower(x)) == model.features(x)``.

    ``lower`` returns a tuple of the tensors that cross the cut (one for a plain stack of
    layers, two inside a residual block); ``names`` maps each of the given parameters to its
    name in ``upper`` (``upper`` shares the model's parameters, it copies none).
    """

    lower: nn.Module
    upper: nn.Module
    names: dict[str, str]


def select_parameters(model: nn.Module, select: Any, argument: str) -> list[str]:
    """Names of ``model``'s parameters chosen by ``select``: a tuple of module-name prefixes
    (``("backbone.features.8",)`` selects that module's parameters) or a predicate
    ``(name, param) -> bool``; in ``named_parameters()`` order.

    Raises:
        ValueError (naming ``argument``): nothing is selected.
    """
    if callable(select):
        names = [n for n, p in model.named_parameters() if select(n, p)]
    else:
        names = [n for n, _ in model.named_parameters() if any(n == q or n.startswith(q + ".") for q in select)]
    if not names:
        raise ValueError(
            f"{argument}={select!r} selects no parameter of {type(model).__name__}; "
            f"its parameters start with {sorted({n.split('.')[0] for n, _ in model.named_parameters()})}"
        )
    return names


def split_features(model: nn.Module, params: Sequence[str], argument: str = "params") -> FeatureSplit:
    """Cut ``model.features`` just before the first use of one of ``params`` (parameter names
    of ``model``), by tracing it with ``torch.fx``.

    ``lower`` then depends on none of ``params``: with BatchNorm statistics fixed (eval
    mode), its outputs for a dataset can be computed once and reused while ``params`` train.

    Raises:
        ValueError (naming ``argument``): ``features`` cannot be traced, or ``params`` are
            used by the first layer with weights (nothing worth cutting off) or not at all.
    """
    net, wanted = _Features(model), {f"m.{n}" for n in params}
    try:
        graph = torch.fx.symbolic_trace(net)
    except Exception as e:  # data-dependent control flow, untraceable calls
        raise ValueError(f"{argument}: cannot trace {type(model).__name__}.features with torch.fx ({e})") from e
    part, seen, lower_ops = {}, False, 0
    for node in graph.graph.nodes:
        if node.op == "call_module":
            seen = seen or any(w.startswith(node.target + ".") for w in wanted)
        elif node.op == "get_attr":
            seen = seen or node.target in wanted
        if not seen and node.op == "call_module":  # layers with weights before the cut
            lower_ops += any(True for _ in graph.get_submodule(node.target).parameters())
        part[node.name] = int(seen)
    if not seen or lower_ops == 0:
        where = "are not used by features()" if not seen else "are used by its first layer: there is nothing before them"
        raise ValueError(f"{argument}: the selected parameters {where}; select parameters of the upper layers")
    cut = split_module(graph, net, lambda node: part[node.name])
    lower, upper = cut.submod_0, cut.submod_1
    by_id = {id(p): n for n, p in upper.named_parameters()}
    own = dict(model.named_parameters())
    return FeatureSplit(_TupleOutput(lower), upper, {n: by_id[id(own[n])] for n in params})


class _TupleOutput(nn.Module):
    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        out = self.module(x)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def lower_features(lower: nn.Module, model: nn.Module, dataset: Dataset, batch_size: int,
                   device: str | torch.device) -> tuple[Tensor, ...]:
    """``lower``'s outputs for every item of ``dataset``, in order: a tuple of ``(N, ...)``
    tensors on ``device`` (``model`` in eval mode, no gradients)."""
    parts: list[tuple[Tensor, ...]] = []
    with eval_mode(model), torch.no_grad():
        for x, _ in _batches(dataset, batch_size, device):
            parts.append(lower(x))
    if not parts:
        raise ValueError("lower_features: the dataset is empty")
    return tuple(torch.cat(p) for p in zip(*parts))


def upper_features(upper: nn.Module, model: nn.Module, cached: tuple[Tensor, ...], batch_size: int
                   ) -> Tensor:
    """``upper``'s outputs ``(N, D)`` for cached ``lower`` outputs (``model`` in eval mode, no
    gradients), in batches of ``batch_size``."""
    with eval_mode(model), torch.no_grad():
        return torch.cat([upper(*(c[i : i + batch_size] for c in cached))
                          for i in range(0, len(cached[0]), batch_size)])


class EvalFeatureCapture:
    """The features ``model.features(x)`` computed by the strategy's own eval forward.

    A plugin that re-scores evaluation outputs calls :meth:`start` in
    ``before_eval_forward`` and :meth:`stop` in ``after_eval_forward``: while capturing, the
    model's ``features`` method is wrapped on the instance and its first output is kept, so
    re-scoring costs no second forward pass when ``forward`` calls ``self.features``
    (:class:`~avalanche_fscl.models.FSCILNet` does). :meth:`stop` falls back to
    ``model.features(x)`` when nothing usable was captured. Call :meth:`stop` from
    ``after_eval`` too: a forward that raised leaves the wrapper in place until then.
    """

    def __init__(self) -> None:
        self._captured: Tensor | None = None
        self._patched: tuple[nn.Module, Any] | None = None  # (model, previous instance attribute)

    def start(self, model: nn.Module) -> None:
        """Begin capturing ``model.features`` (a no-op when it is not a plain method)."""
        self._unpatch()
        self._captured = None
        original = getattr(model, "features", None)
        if not inspect.ismethod(original):
            return

        def features(x, *a, **kw):
            out = original(x, *a, **kw)
            if self._captured is None:
                self._captured = out
            return out

        self._patched = (model, model.__dict__.get("features", _MISSING))
        model.__dict__["features"] = features

    def stop(self, model: nn.Module | None = None, x: Tensor | None = None) -> Tensor | None:
        """End capturing; the captured ``(B, D)`` features, recomputed from ``x`` when absent."""
        self._unpatch()
        feats, self._captured = self._captured, None
        if model is not None and x is not None and (feats is None or feats.ndim != 2 or feats.shape[0] != x.shape[0]):
            feats = model.features(x)
        return feats

    def _unpatch(self) -> None:
        if self._patched is None:
            return
        model, previous = self._patched
        if previous is _MISSING:
            model.__dict__.pop("features", None)
        else:
            model.__dict__["features"] = previous
        self._patched = None
