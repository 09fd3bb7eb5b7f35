"""FSCILStrategy: Avalanche's SupervisedTemplate with a per-session training schedule."""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from avalanche.core import SupervisedPlugin
from avalanche.models.dynamic_optimizers import update_optimizer
from avalanche.training.templates import SupervisedTemplate
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler

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
        **kwargs,
    ):
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
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

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
        if not self.balanced or self.session == 0:  # the base session trains as every strategy does
            return super().make_train_dataloader(**kwargs)
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
        super().optimizer_step()
