"""The strategy contract: what a registered strategy may supply and what the runner does with it.

A strategy is a :class:`StrategySpec` subclass registered by name::

    @register_strategy("mine")
    class Mine(StrategySpec):
        \"\"\"One line for `avalanche-fscl list`.\"\"\"

        def __init__(self, strength: float = 1.0, seed: int = 0):   # the hyper-parameters
            super().__init__()
            self.strength, self.seed = strength, seed

        def plugins(self, ctx):
            return [MyPlugin(self.strength, seed=self.seed)]

Every method has a default that reproduces the plain baselines; override only what differs.

==========================  ====================================================  ==========================
method                      default                                               the runner ...
==========================  ====================================================  ==========================
``plugins(ctx)``            ``[]``                                                attaches them (before the evaluator)
``build_model(ctx)``        :class:`FSCILNet` over ``config.model``               trains and checkpoints it
``trainable_parameters(m)`` parameters with ``requires_grad``                     gives only these to the optimizer
``make_optimizer(m, ctx)``  SGD (``config.train`` momentum, weight decay)         resets its state every session
``schedule(base)``          the run's :class:`SessionSchedule` unchanged          reads epochs and lr per session
``fit_base_session(...)``   nothing (the Avalanche loop trains session 0)         calls it before session 0's loop
``base_session_key(ctx)``   model, base schedule, optimizer settings (+ class     shares and caches session-0 weights
                            and hyper-parameters when a method above is custom)   between strategies with equal keys
``columns(ctx)``            ``[]``                                                evaluates them after every session
``check(ctx)``              nothing                                               calls it before writing anything
==========================  ====================================================  ==========================

Class attributes: ``cumulative`` (train each session on all data seen so far) and
``balanced`` (class-balanced batches in incremental sessions).

Hyper-parameters are the constructor's keyword arguments (``strategy_args.<name>`` in a
config; unknown keys are errors naming the allowed ones). An argument named ``seed`` gets
the run's seed unless the config sets it. Check their values in the constructor and raise
``ValueError`` naming the argument: the runner constructs every strategy before it writes
anything, so a bad value stops the run with one line and no output folder.

Session 0 in the runner: with a cached base session (same key) the model loads those
weights and the loop runs 0 epochs; otherwise ``fit_base_session`` runs, then the loop
trains ``schedule.base_epochs`` epochs (set them to 0 in :meth:`StrategySpec.schedule` when
``fit_base_session`` does all the training) and the weights at the end of those epochs,
before any plugin's ``after_training_exp``, are cached. Plugins' callbacks run in every
session, cached or not; a strategy whose plugins change session 0's *training* (not what
happens after it) must say so in ``base_session_key`` (e.g. add its name), or it would share
the baselines' cached weights.

Resume: after every session the runner saves the model's and optimizer's ``state_dict``,
every plugin's ``state_dict()`` and the evaluation so far; a killed run continues from
there. So every plugin (and every :class:`EvalColumn`) that keeps state must implement
``state_dict()`` / ``load_state_dict(state)`` returning tensors and plain data
(``torch.load(weights_only=True)``-safe). A plugin without them is an error naming its
class, unless the class declares ``stateless = True``.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

import torch
from avalanche.core import SupervisedPlugin
from torch import nn

from .. import _register
from ..benchmarks.config import RunConfig
from .template import FSCILStrategy, SessionSchedule

if TYPE_CHECKING:
    from ..streams import FSCILScenario

__all__ = [
    "StrategyContext",
    "StrategySpec",
    "EvalColumn",
    "register_column",
    "create_column",
    "COLUMNS",
    "require_state_dicts",
]


@dataclass
class StrategyContext:
    """What a strategy may read while it is built: the scenario, the run's config, seed, device.

    ``config`` is the run's validated :class:`~avalanche_fscl.benchmarks.RunConfig`
    (``config.train``, ``config.model``, ``config.stream``); Python users can pass a default
    one: ``StrategyContext(scenario, seed=0)``.
    """

    scenario: "FSCILScenario"
    config: RunConfig = field(default_factory=RunConfig)
    seed: int = 0
    device: str = "cpu"

    def run_schedule(self) -> SessionSchedule:
        """The run's schedule from ``config.train`` (before a strategy adapts it)."""
        t = self.config.train
        return SessionSchedule(t.base_epochs, t.base_lr, t.novel_epochs, t.novel_lr, t.cosine)


class StrategySpec:
    """A registered strategy: its plugins, and optionally its own model, optimizer, base
    training, schedule and evaluation columns. See the module docstring for the contract."""

    #: registry name (set by :func:`~avalanche_fscl.strategies.register_strategy`).
    name: ClassVar[str] = ""
    #: one line for ``avalanche-fscl list`` (the class docstring's first line).
    summary: ClassVar[str] = ""
    #: train each session on the training data of every session so far.
    cumulative: ClassVar[bool] = False
    #: class-balanced batches in incremental sessions (see :class:`FSCILStrategy`).
    balanced: ClassVar[bool] = False

    def __init__(self, **hparams: Any):
        self.hparams: dict[str, Any] = dict(hparams)

    @classmethod
    def hyperparameters(cls) -> dict[str, Any]:
        """``{argument: default}`` of the constructor."""
        return {
            n: p.default
            for n, p in inspect.signature(cls.__init__).parameters.items()
            if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }

    # ------------------------------------------------------------------ pieces
    def plugins(self, ctx: StrategyContext) -> list[SupervisedPlugin]:
        """The strategy's Avalanche plugins (fresh objects for each run)."""
        return []

    def build_model(self, ctx: StrategyContext) -> nn.Module:
        """The network, initialised from ``ctx.seed``: :class:`FSCILNet` over ``config.model``."""
        from ..models import FSCILNet, create_backbone

        torch.manual_seed(ctx.seed)
        m = ctx.config.model
        in_channels = ctx.scenario.train_stream[0].dataset[0][0].shape[0]
        backbone = create_backbone(m.backbone, in_channels=in_channels, **m.backbone_args)
        return FSCILNet(backbone, ctx.scenario.n_classes, head=m.head, scale=m.scale)

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Parameters the optimizer updates (frozen weights never enter it)."""
        return [p for p in model.parameters() if p.requires_grad]

    def make_optimizer(self, model: nn.Module, ctx: StrategyContext) -> torch.optim.Optimizer:
        """SGD over :meth:`trainable_parameters` (the schedule sets its learning rate)."""
        t = ctx.config.train
        return torch.optim.SGD(
            self.trainable_parameters(model), lr=t.base_lr, momentum=t.momentum,
            weight_decay=t.weight_decay, nesterov=t.momentum > 0,
        )

    def schedule(self, base: SessionSchedule) -> SessionSchedule:
        """This strategy's epochs and learning rates, given the run's ``base`` schedule."""
        return base

    def fit_base_session(self, strategy: FSCILStrategy, experience: Any, ctx: StrategyContext) -> None:
        """Train ``strategy.model`` on the base session before session 0's Avalanche loop
        (e.g. episodic meta-learning). Default: nothing."""

    def base_session_key(self, ctx: StrategyContext) -> dict[str, Any] | None:
        """What, besides the stream, seed, device and code, determines the weights after
        session 0; strategies with equal keys share one cached base session. ``None``: never
        cache. The default adds the class and hyper-parameters when the model, optimizer or
        base training is custom, so such strategies never share with the baselines."""
        t = ctx.config.train
        sched = self.schedule(ctx.run_schedule())
        key: dict[str, Any] = {
            "model": dataclasses.asdict(ctx.config.model),
            "base": [t.batch_size, sched.base_epochs, sched.base_lr, sched.cosine,
                     t.momentum, t.weight_decay, t.channels_last],
        }
        if t.autocast is not None:  # an fp32 key keeps the fields it always had
            key["base"].append(t.autocast)
        custom = [m for m in ("build_model", "trainable_parameters", "make_optimizer", "fit_base_session")
                  if getattr(type(self), m) is not getattr(StrategySpec, m)]
        if custom:
            key["custom"] = {"class": f"{type(self).__module__}.{type(self).__qualname__}",
                             "methods": custom, "hparams": _plain(self.hparams)}
        return key

    def columns(self, ctx: StrategyContext) -> list["EvalColumn"]:
        """Extra per-session evaluations of this strategy (e.g. held-out few-shot accuracy)."""
        return []

    def check(self, ctx: StrategyContext) -> None:
        """Raise ``ValueError`` naming the argument when this strategy cannot run on
        ``ctx.scenario`` (e.g. it needs an external corpus the stream lacks). The runner
        calls it for every strategy before it writes anything. Default: nothing."""


class EvalColumn:
    """An extra evaluation after every session, reported next to the FSCIL metrics.

    Subclass and implement :meth:`evaluate`. The runner stores the values per session in
    ``results.json`` (``runs[i].columns[name]``), shows ``<title> (last)`` and a per-session
    table in ``results.md`` (mean ± std over seeds) and logs ``columns/<name>`` to W&B.

    Attributes:
        name: key in results and W&B (letters, digits, ``_``, ``-``).
        title: column header in ``results.md``.
        higher_is_better: for readers of the report.
        stateless: ``True`` (default) for a column whose value depends only on the strategy
            it evaluates; a column that keeps state sets ``False`` and implements
            ``state_dict()`` / ``load_state_dict()`` (checkpointed with the plugins).
    """

    name: str = ""
    title: str = ""
    higher_is_better: bool = True
    stateless: bool = True

    def evaluate(self, strategy: FSCILStrategy, session: int) -> float:
        """The value after ``session`` (a fraction for accuracies); must not change the model."""
        raise NotImplementedError


ColumnFactory = Callable[..., EvalColumn]
#: Columns a config can request for every strategy (``columns: {name: {args}}``).
COLUMNS: dict[str, ColumnFactory] = {}


def register_column(name: str) -> Callable[[ColumnFactory], ColumnFactory]:
    """Decorator: register ``factory(ctx, **args) -> EvalColumn`` under ``name``."""
    return _register(COLUMNS, "column", name)


def create_column(name: str, ctx: StrategyContext, args: Mapping[str, Any] | None = None) -> EvalColumn:
    """The registered column ``name`` for ``ctx``; unknown names list the allowed ones."""
    if name not in COLUMNS:
        raise ValueError(f"columns.{name}: unknown column; allowed: {', '.join(sorted(COLUMNS)) or '(none registered)'}")
    return COLUMNS[name](ctx, **dict(args or {}))


def require_state_dicts(objects: Mapping[str, Any]) -> None:
    """Raise ``TypeError`` for any object without ``state_dict``/``load_state_dict``
    whose class does not declare ``stateless = True`` (see the module docstring)."""
    for key, obj in objects.items():
        if getattr(type(obj), "stateless", False):
            continue
        if not (callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))):
            raise TypeError(
                f"{type(obj).__name__} ({key}) has no state_dict()/load_state_dict(): the runner "
                f"checkpoints every session and could not resume it; implement them, or declare "
                f"`stateless = True` on the class if it keeps no state"
            )


def _plain(value: Any) -> Any:
    """JSON-able copy of hyper-parameters (other objects by their repr)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)
