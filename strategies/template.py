"""FSCILStrategy: Avalanche's SupervisedTemplate with a per-session training schedule."""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from avalanche.core import SupervisedPlugin
from avalanche.models.dynamic_optimizers import update_optimizer
from avalanche.training.templates import SupervisedTemplate
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from ..models.amp import autocast_context, check_autocast
from ..plugins._session import training_session

__all__ = ["FSCILStrategy", "SessionSchedule"]


@dataclass(frozen=True)
class SessionSchedule:
    """Epochs and learning rate of the base session and of the incremental sessions.

    The one place that decides how long a session trains: :class:`FSCILStrategy` reads
    :meth:`epochs` before each session (a registered strategy adapts the run's schedule in
    :meth:`~avalanche_fscl.strategies.StrategySpec.schedule`, e.g. ``novel_epochs=0`` for
    prototype classifiers).

    Args:
        base_epochs, base_lr: session 0 (the large base session).
        novel_epochs, novel_lr: every later session (few shots: few epochs, small lr).
        cosine: anneal the learning rate to 0 over each session's iterations (cosine);
            otherwise keep it constant.
    """

    base_epochs: int = 10
    base_lr: float = 0.1
    novel_epochs: int = 10
    novel_lr: float = 0.01
    cosine: bool = True

    def __post_init__(self):
        for name in ("base_epochs", "novel_epochs"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        for name in ("base_lr", "novel_lr"):
            v = getattr(self, name)
            if not v >= 0:
                raise ValueError(f"{name} must be >= 0, got {v!r}")

    def replace(self, **changes: Any) -> "SessionSchedule":
        """A copy with some fields changed (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def epochs(self, session: int) -> int:
        """Epochs of ``session``."""
        return self.base_epochs if session == 0 else self.novel_epochs

    def lr(self, session: int, step: int, total_steps: int) -> float:
        """Learning rate at ``step`` of ``total_steps`` iterations of ``session``."""
        lr = self.base_lr if session == 0 else self.novel_lr
        if not self.cosine or total_steps <= 0:
            return lr
        return 0.5 * lr * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


class FSCILStrategy(SupervisedTemplate):
    """A supervised Avalanche strategy for few-shot class-incremental streams.

    Differences from Avalanche's ``Naive``:

    * each session trains :meth:`session_epochs` epochs with the learning rate of a
      :class:`SessionSchedule` (cosine decay per session); a session marked
      :meth:`mark_pretrained` (trained outside the loop, e.g. loaded from the base-session
      cache or meta-learned) runs 0 epochs, and its plugin callbacks still run;
    * the optimizer holds exactly the parameters it was built with, plus trainable ones a
      dynamic model creates later (Avalanche 0.6.0's ``make_optimizer`` adds every model
      parameter, frozen ones included), and its state (momentum) is reset at every
      session, so a run resumed from a session checkpoint continues exactly;
    * evaluation runs under ``torch.no_grad`` with ``eval_mb_size`` batches (Avalanche's).

    Args:
        model: the network (e.g. :class:`~avalanche_fscl.models.FSCILNet`).
        optimizer: its optimizer over the trainable parameters; the learning rate of every
            group is set by the schedule.
        schedule: epochs and learning rates per session.
        criterion: training loss (cross-entropy by default).
        train_mb_size, eval_mb_size: batch sizes.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a ``torch.device``.
        plugins: Avalanche plugins (ours or Avalanche's).
        evaluator: an ``EvaluationPlugin`` (e.g. with :func:`~avalanche_fscl.plugins.fscil_metrics`).
        cumulative: train each session on the training data of every session so far
            (``joint``); :meth:`remember` restores that history on resume.
        balanced: in incremental sessions (not the base session), draw training batches
            class-balanced (every class equally likely, with replacement; an epoch is as many
            draws as samples), so 5-shot classes are not drowned by thousands of base samples.
        channels_last: keep the model's conv weights and every 4-D input batch in
            ``torch.channels_last`` layout (about 1.8x faster convolutions on CPU here).
        materialize_mb: hold a session's training samples as one tensor on ``device`` (at most
            this many MiB; 0: never) when their transform is deterministic, so an epoch slices
            batches instead of loading every sample through Avalanche's dataset layers (2-3.5 ms
            of host time per batch of 128 on one CPU thread: most of the runner's cost over a
            plain loop on a GPU). The batches, their order and the random numbers drawn are those of the
            per-sample path, bit for bit; randomly augmented data always takes that path.
        autocast: mixed precision of the strategy's forward passes (training and evaluation):
            ``None`` (fp32), ``"bf16"`` or ``"fp16"`` (``torch.autocast`` on ``device``; the
            logits return as fp32, so the loss and metrics are fp32; ``"fp16"`` also scales the
            loss with a ``GradScaler``, unscaled right after ``backward`` so plugins see true
            gradients, and skips a step whose gradients overflow). Weights and optimizer stay
            fp32. Whether it pays depends on the CPU or GPU: measure (the runner's
            ``train.autocast: auto`` does); plugins' own passes (prototypes, importance,
            meta-learning) keep their own settings.

    Attributes:
        session: the session being trained (during evaluation: the last one trained;
            -1 before any training).
        capture_fitted_state: when ``True``, :attr:`fitted_state` receives a CPU copy of the
            model's ``state_dict`` at the end of each session's epochs, before the plugins'
            ``after_training_exp`` (prototypes, importance passes) change the model: the
            weights the base-session cache stores.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: SessionSchedule | None = None,
        criterion: nn.Module | None = None,
        train_mb_size: int = 64,
        eval_mb_size: int = 256,
        device: str | torch.device = "cpu",
        plugins: Sequence[SupervisedPlugin] | None = None,
        evaluator=None,
        cumulative: bool = False,
        balanced: bool = False,
        channels_last: bool = False,
        materialize_mb: float = 1024,
        autocast: str | None = None,
        **kwargs,
    ):
        self.autocast = check_autocast(autocast)
        self.schedule = schedule or SessionSchedule()
        self.cumulative = cumulative
        self.balanced = balanced
        self._seen_data = None
        self._pretrained: set[int] = set()
        self.session = -1
        self.capture_fitted_state = False
        self.fitted_state: dict[str, torch.Tensor] | None = None
        extra = {} if evaluator is None else {"evaluator": evaluator}
        super().__init__(
            model=model,
            optimizer=optimizer,
            criterion=criterion if criterion is not None else nn.CrossEntropyLoss(),
            train_mb_size=train_mb_size,
            train_epochs=self.schedule.base_epochs,
            eval_mb_size=eval_mb_size,
            device=device,
            plugins=list(plugins or []),
            **extra,
            **kwargs,
        )
        self._step = 0
        self._total_steps = 0
        self._built_params = {id(p) for p in self.model.parameters()}
        self.channels_last = channels_last
        if materialize_mb < 0:
            raise ValueError(f"materialize_mb={materialize_mb!r}: must be >= 0 (0: never)")
        self.materialize_mb = materialize_mb
        self.materialized = False  # whether the current session's batches are slices of one tensor
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self._scaler = self._new_scaler()

    # -------------------------------------------------------------- epochs and session
    def session_epochs(self, session: int) -> int:
        """Epochs of ``session``: the schedule's, or 0 for a session marked pretrained."""
        return 0 if session in self._pretrained else self.schedule.epochs(session)

    def mark_pretrained(self, session: int) -> None:
        """Session ``session`` was trained outside the loop: its next training runs 0 epochs."""
        self._pretrained.add(int(session))

    def _before_training_exp(self, **kwargs):
        self.session = training_session(self)
        self.train_epochs = self.session_epochs(self.session)
        self._pretrained.discard(self.session)
        self._step = 0
        self.fitted_state = None
        self._scaler = self._new_scaler()  # per session, like the optimizer state: a resume is exact
        super()._before_training_exp(**kwargs)
        self._total_steps = self.train_epochs * len(self.dataloader)

    def _train_exp(self, experience, eval_streams=None, **kwargs):
        super()._train_exp(experience, eval_streams, **kwargs)
        if self.capture_fitted_state:
            self.fitted_state = {  # a module's extra state (plain data) is copied as is
                k: v.detach().cpu().clone() if torch.is_tensor(v) else copy.deepcopy(v)
                for k, v in self.model.state_dict().items()
            }

    # ---------------------------------------------------------------------- data
    def _unpack_minibatch(self):
        super()._unpack_minibatch()
        if self.channels_last and self.mbatch[0].dim() == 4:
            self.mbatch[0] = self.mbatch[0].contiguous(memory_format=torch.channels_last)

    def make_train_dataloader(self, **kwargs):
        # A trailing batch of one sample breaks BatchNorm in training mode: drop just that one.
        n = len(self.adapted_dataset)
        kwargs["drop_last"] = n > self.train_mb_size and n % self.train_mb_size == 1
        self.materialized = False
        if not self.balanced or self.session == 0:  # the base session trains as every strategy does
            super().make_train_dataloader(**kwargs)
            fast = _materialize(self.dataloader, self.device, self.materialize_mb)
            if fast is not None:
                self.dataloader, self.materialized = fast, True
            return
        labels = np.asarray(list(self.adapted_dataset.targets), dtype=np.int64)
        weights = 1.0 / np.bincount(labels)[labels]
        # Draws from torch's global RNG, which the runner seeds per (seed, session).
        sampler = WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), num_samples=n)
        self.dataloader = DataLoader(
            self.adapted_dataset, batch_size=self.train_mb_size, sampler=sampler,
            drop_last=kwargs["drop_last"], collate_fn=getattr(self.adapted_dataset, "collate_fn", None),
        )

    def remember(self, experiences) -> None:
        """Record past training experiences (a cumulative strategy resumed mid-stream)."""
        for exp in experiences:
            self._seen_data = exp.dataset if self._seen_data is None else self._seen_data.concat(exp.dataset)

    def train_dataset_adaptation(self, **kwargs):
        if not self.cumulative:
            return super().train_dataset_adaptation(**kwargs)
        self.remember([self.experience])
        self.adapted_dataset = self._seen_data.train()

    # ----------------------------------------------------------------- optimizer
    def make_optimizer(self, reset_optimizer_state: bool = False, **kwargs):
        # Avalanche's version offers every model parameter to the optimizer. Here the
        # parameters the model had when the strategy was built stay out unless the optimizer
        # was given them (frozen CLIP towers, a backbone fitted then frozen); parameters a
        # dynamic model grows later join if trainable.
        held = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        trainable = {
            n: p for n, p in self.model.named_parameters()
            if id(p) in held or (p.requires_grad and id(p) not in self._built_params)
        }
        self.optimized_param_id = update_optimizer(
            self.optimizer, trainable, self.optimized_param_id, reset_state=reset_optimizer_state
        )

    def check_model_and_optimizer(self, reset_optimizer_state: bool = True, **kwargs):
        super().check_model_and_optimizer(reset_optimizer_state=True, **kwargs)

    def optimizer_step(self):
        lr = self.schedule.lr(self.session, self._step, self._total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._step += 1
        if self._scaler.is_enabled():
            self._scaler.step(self.optimizer)  # skipped when unscale_ found inf/nan gradients
            self._scaler.update()
        else:
            super().optimizer_step()

    # ----------------------------------------------------------- mixed precision
    def _new_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.autocast == "fp16")

    def forward(self):
        if self.autocast is None:
            return super().forward()
        with autocast_context(self.device, self.autocast):
            out = super().forward()
        return out.float() if torch.is_tensor(out) and out.is_floating_point() else out

    def backward(self):
        if not self._scaler.is_enabled():
            return super().backward()
        self._scaler.scale(self.loss).backward(retain_graph=self.retain_graph)
        self._scaler.unscale_(self.optimizer)  # after_backward / before_update plugins see true gradients


class _Rows(Dataset):
    """A session's samples held as tensors; ``__getitems__`` slices a whole batch at once."""

    def __init__(self, columns: list[torch.Tensor]):
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns[0])

    def __getitem__(self, i: int):
        return [c[i] for c in self.columns]

    def __getitems__(self, idx: list[int]) -> list[torch.Tensor]:
        idx = torch.as_tensor(idx, device=self.columns[0].device)
        return [c[idx] for c in self.columns]


def _batch_as_is(batch):
    return batch


def _materialize(loader, device: torch.device, max_mb: float):
    """A ``DataLoader`` that yields ``loader``'s batches as slices of tensors built once from its
    dataset, when the items are deterministic and fit ``max_mb``; else ``None``.

    It reuses ``loader``'s batch sampler, so the same indices come in the same order and the
    same random numbers are drawn. Deterministic means: the same items twice for a few probes,
    with the random generators restored afterwards (a random transform differs, and must not
    consume draws here).
    """
    if max_mb <= 0 or type(loader) is not DataLoader or loader.batch_sampler is None or loader.num_workers > 0:
        return None
    ds = loader.dataset
    n = len(ds)
    if n == 0:
        return None
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()
    try:
        probe = sorted({0, n // 3, (2 * n) // 3, n - 1})
        first, again = [ds[i] for i in probe], [ds[i] for i in probe]
        same = all(len(a) == len(b) and all(torch.equal(torch.as_tensor(u), torch.as_tensor(v)) for u, v in zip(a, b))
                   for a, b in zip(first, again))
        x0 = torch.as_tensor(first[0][0])
        if not same or x0.numel() * x0.element_size() * n > max_mb * 2**20:
            return None
        items = [ds[i] for i in range(n)]
    finally:
        torch.set_rng_state(states[0])
        random.setstate(states[1])
        np.random.set_state(states[2])
    columns = loader.collate_fn(items)  # the per-sample path's own collation, over every item at once
    if not isinstance(columns, (list, tuple)) or not all(torch.is_tensor(c) and len(c) == n for c in columns):
        return None
    rows = _Rows([c.to(device) for c in columns])
    return DataLoader(rows, batch_sampler=loader.batch_sampler, collate_fn=_batch_as_is,
                      pin_memory=False)  # the rows are on the device already, or it is the CPU
