"""FSCILStrategy: Avalanche's SupervisedTemplate with a per-session training schedule."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.templates import SupervisedTemplate
from torch import nn

__all__ = ["FSCILStrategy", "SessionSchedule", "NovelEpochsPlugin"]


class SessionSchedule:
    """Epochs and learning rate of the base session and of the incremental sessions.

    Args:
        base_epochs, base_lr: session 0 (the large base session).
        novel_epochs, novel_lr: every later session (few shots: few epochs, small lr).
        cosine: anneal the learning rate to 0 over each session's iterations (cosine);
            otherwise keep it constant.
    """

    def __init__(
        self,
        base_epochs: int = 10,
        base_lr: float = 0.1,
        novel_epochs: int = 10,
        novel_lr: float = 0.01,
        cosine: bool = True,
    ):
        for name, v in [("base_epochs", base_epochs), ("novel_epochs", novel_epochs)]:
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        for name, v in [("base_lr", base_lr), ("novel_lr", novel_lr)]:
            if not v >= 0:
                raise ValueError(f"{name} must be >= 0, got {v!r}")
        self.base_epochs, self.base_lr = base_epochs, base_lr
        self.novel_epochs, self.novel_lr = novel_epochs, novel_lr
        self.cosine = cosine

    def epochs(self, session: int) -> int:
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

    * the number of epochs and the learning rate follow a :class:`SessionSchedule`
      (session = ``experience.current_experience``), with a cosine decay per session;
    * the optimizer state (momentum) is reset at every session, so a run resumed from a
      session checkpoint continues exactly like an uninterrupted one;
    * evaluation runs under ``torch.no_grad`` with ``eval_mb_size`` batches (Avalanche's).

    Args:
        model: the network (e.g. :class:`~avalanche_fscl.models.FSCILNet`).
        optimizer: its optimizer; the learning rate of every group is set by the schedule.
        schedule: epochs and learning rates per session.
        criterion: training loss (cross-entropy by default).
        train_mb_size, eval_mb_size: batch sizes.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a ``torch.device``.
        plugins: Avalanche plugins (ours or Avalanche's).
        evaluator: an ``EvaluationPlugin`` (e.g. with :func:`~avalanche_fscl.plugins.fscil_metrics`).
        cumulative: train each session on the training data of every session so far
            (the ``joint`` upper bound); :meth:`remember` restores that history on resume.
        channels_last: keep the model's conv weights and every 4-D input batch in
            ``torch.channels_last`` layout (about 1.8x faster convolutions on CPU here).
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
        channels_last: bool = False,
        **kwargs,
    ):
        self.schedule = schedule or SessionSchedule()
        self.cumulative = cumulative
        self._seen_data = None
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
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def _unpack_minibatch(self):
        super()._unpack_minibatch()
        if self.channels_last and self.mbatch[0].dim() == 4:
            self.mbatch[0] = self.mbatch[0].contiguous(memory_format=torch.channels_last)

    @property
    def session(self) -> int:
        """Index of the experience being trained (0 = base session)."""
        exp = self.experience
        return int(getattr(exp, "current_experience", 0) or 0) if exp is not None else 0

    def _before_training_exp(self, **kwargs):
        # Set before the plugins' before_training_exp, so a plugin can still override it.
        self.train_epochs = self.schedule.epochs(self.session)
        self._step = 0
        super()._before_training_exp(**kwargs)
        self._total_steps = self.train_epochs * len(self.dataloader)

    def make_train_dataloader(self, **kwargs):
        # A trailing batch of one sample breaks BatchNorm in training mode: drop just that one.
        n = len(self.adapted_dataset)
        kwargs["drop_last"] = n > self.train_mb_size and n % self.train_mb_size == 1
        super().make_train_dataloader(**kwargs)

    def remember(self, experiences) -> None:
        """Record past training experiences (a cumulative strategy resumed mid-stream)."""
        for exp in experiences:
            self._seen_data = exp.dataset if self._seen_data is None else self._seen_data.concat(exp.dataset)

    def train_dataset_adaptation(self, **kwargs):
        if not self.cumulative:
            return super().train_dataset_adaptation(**kwargs)
        self.remember([self.experience])
        self.adapted_dataset = self._seen_data.train()

    def check_model_and_optimizer(self, reset_optimizer_state: bool = True, **kwargs):
        super().check_model_and_optimizer(reset_optimizer_state=True, **kwargs)

    def optimizer_step(self):
        lr = self.schedule.lr(self.session, self._step, self._total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._step += 1
        super().optimizer_step()


class NovelEpochsPlugin(SupervisedPlugin):
    """Override the number of epochs of the incremental sessions (session >= 1).

    Args:
        epochs: epochs per incremental session for this strategy (e.g. 1 for ``joint``,
            whose sessions re-train on all the base data).
    """

    def __init__(self, epochs: int):
        super().__init__()
        if not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
        self.epochs = epochs

    def before_training_exp(self, strategy, *args, **kwargs):
        if getattr(strategy.experience, "current_experience", 0):
            strategy.train_epochs = self.epochs
