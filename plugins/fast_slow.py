"""Fast/slow weights with two-step consolidation (FSCL; Wang, Li, Zhong, Zhu 2021,
"Few-shot Continual Learning: a Brain-inspired Approach", arXiv 2104.09034).

The paper's equations are not public; this module follows its description and fills the
rest in. What comes from where:

* [paper] Two sets of weights: *fast* weights learn the sequence of few-shot sessions
  without forgetting, *slow* weights learn to generalise from few shots; they are updated
  interdependently; a two-step consolidation: step 1 consolidates the fast weights (no
  forgetting), step 2 the slow weights (better generalisation, no overfitting).
* [ours] Slow weights ``phi`` = the parameters selected by ``slow`` (default: the backbone)
  and the buffers of their modules, kept by this plugin. Fast weights ``theta`` = the
  model's live parameters, trained by the host strategy's optimizer.
* [ours] Meta-learning of ``phi`` at the end of the base session: first-order episodic
  training (FOMAML with a cosine-prototype head; ``meta_inner_steps=0`` is ProtoNet;
  ``first_order=False`` backpropagates through the inner steps) on N-way K-shot episodes
  of the base classes. ``theta`` starts from ``phi``: the model keeps the meta-learned
  weights. BatchNorm during the episodes (``meta_norm_stats``): ``"episode"`` normalises
  with each episode's batch and updates the running statistics; ``"frozen"`` keeps the
  base training's statistics (eval mode), so the features the prototypes are built from
  at evaluation are the ones meta-learning optimised.
* [ours] ``meta_cache``: when the slow weights are the upper layers (``slow`` a list of
  their names) and BatchNorm statistics are frozen, the layers below are a fixed function
  during meta-learning, so their outputs are computed once per base image and every episode
  runs through the slow layers only (a pure speed-up without augmentation; with it, the
  episodes see un-augmented images). This is how FSCL's meta-learning fits a budget.
* [ours] The classifier (with step 1, or after meta-learning) is a cosine prototype
  classifier: at the end of every session the rows of its classes are set to the
  normalised mean features of their training samples (the base classes' too: trained
  cosine rows align far less with features than prototypes, so new prototype rows would
  capture the base classes' samples).
* [ours] Step 1, fast consolidation, in every incremental session: the quadratic penalty
  ``fast_strength * sum_i W_i (theta_i - theta*_i)^2`` over every parameter but the
  classifier rows, where ``theta*`` are the fast weights after the previous session and
  ``W = 1 + I``: ``I`` is the accumulated importance (``"fisher"``, ``"mas"`` or ``"si"``,
  normalised to mean 1 after each session) and the 1 a plain L2 anchor for every weight
  (importance alone leaves the many weights it rates near 0 free, and their drift over ten
  sessions destroyed the base classes on Omniglot's validation protocol). It is applied as its proximal (implicit) step after every optimizer
  step, ``theta <- theta* + (theta - theta*) / (1 + 2 lr fast_strength W)``, the exact
  minimiser of the penalty plus a step's distance: stable for any strength, whereas an
  explicit gradient step of the penalty diverges once ``lr * fast_strength * W > 1`` (as
  EWC's does with plain SGD); old classes' classifier rows stay fixed (restored after every
  optimizer step, weight decay included), new classes' rows start at their prototypes
  and are reset to the prototypes of the trained features when the session ends (5 shots
  over-fit a trained row, which then captures old classes' samples), and BatchNorm layers
  keep their running statistics (eval mode: 50 samples cannot
  re-estimate them, and the shift would move every old class's features).
* [ours] Step 2, slow consolidation, after every incremental session:
  ``phi <- phi + slow_step * (theta - phi) / (1 + slow_strength * W_phi)`` (a Reptile-style
  step toward the consolidated fast weights, damped element-wise where the slow weights
  are important, so a 5-shot session cannot drag them).
* [ours] ``session_meta_episodes``: the slow weights also meta-learn from every incremental
  session (the paper: slow weights "learn to generalise from few shots" as tasks arrive). After
  step 2, ``phi`` takes that many episodes of the same first-order episodic learning on the
  session's own shots (all its classes; half of each class's samples as support, the rest as
  queries), at ``session_meta_lr``; only ``phi`` changes, the fast weights do not. Off (0) by
  default: on Tiny ImageNet (50 episodes at 0.001, chosen on one validation seed) it lowered the
  held-out column from 53.3 to 49.5 over ten sessions (3 seeds;
  ``benchmarks/results/tiny_imagenet_fscil_fscl_sme``). On the task sequence
  (``omniglot_tasks``: 10 classes before the first incremental session) it is what makes the
  held-out column rise (``benchmarks/README.md``); that config turns it on.
* [ours] ``session_meta_memory``: the slow weights' own episodic memory. After every session
  (the base session included) up to that many samples of each of its classes are kept
  (un-augmented, as :class:`~avalanche_fscl.plugins.ClassBalancedReplayPlugin` keeps them), and
  the session episodes are drawn over every class in memory (all classes seen so far, up to
  ``meta_ways`` per episode) instead of the session's classes only: the slow weights keep
  meta-learning on earlier tasks as new ones arrive rather than fitting 50 images. Off (0) by
  default: on the Tiny ImageNet validation protocol (20 per class, 50 episodes at 0.01, 3 seeds) the
  held-out column moved by −0.36 (+0.38, −0.21, −1.24; ``benchmarks/results/validation/summary.md``).
* [ours] ``fast_from_slow``: after every incremental session (after step 2 and the session
  episodes) the fast weights restart from the slow ones, ``theta <- phi`` on the slow
  parameters (the design's "fast weights initialised from phi", applied every session rather
  than once after the base session), the anchors of step 1 move there, and every class's row is
  recomputed as the prototype of its samples in the session memory (old rows were built from
  features that no longer exist). So what the slow weights learn from the sessions reaches
  the seen-class classifier. Needs ``session_meta_memory``; off by default. With
  ``session_meta_memory`` at least the sessions' shots (the task sequence), the rows use every
  training sample; on an FSCIL stream the base classes' rows would come from the memory's
  few samples instead of all of them.
* [ours] ``row_steps``: with ``fast_from_slow``, after the rows are rebuilt from the memory they
  learn it: ``row_steps`` full-batch steps of cross-entropy over the memory's features (the
  backbone fixed, the rows starting at the prototypes; SGD with momentum 0.9 at ``row_lr``). The
  classifier rows are fast weights; this is their fast learning of every class seen, from the
  same stored shots the prototypes average. Off (0) by default.
* [ours] ``row_memory``: the same fast learning of the rows on an FSCIL stream, where the fast
  weights are not restarted. At the end of every session (the base session's included), after
  the session's rows are set to its prototypes, the features of up to ``row_memory`` training
  samples of each of its classes (eval transform; a class-balanced random choice) are stored,
  and every seen class's row then takes ``row_steps`` full-batch steps of class-balanced
  cross-entropy (each class weighted by one over its stored features) over all stored features.
  A class's features are those of the network that learned it, as its prototype row is: they are
  not re-embedded when step 1 moves the fast weights (re-embedding every stored input each
  session made an incremental session 11-20 s instead of 2.5 s on the Omniglot validation
  protocol, ``benchmarks/results/validation/summary.md``). Memory: one feature
  vector per stored sample (Conv4: 64 floats, 256 B). A prototype is only the average of a
  class's features; trained rows also move away from the classes they are confused with.
* [ours, the loss from Menon et al. 2021, "Long-tail learning via logit adjustment"]
  ``row_logit_adjust=tau``: the rows learn with the logit-adjusted cross-entropy instead of the
  re-weighted one: ``tau * log(n_c / N)`` is added to class ``c``'s training logit (``n_c`` its
  stored features), evaluation logits are unchanged. A base class storing 30x a 5-shot class's
  features then has to win by a margin of ``tau * log 30``; the rare classes' rows keep their
  reach instead of being fitted on the same footing (tau 1 is the balanced softmax).
* [ours] ``meta_autocast="bf16"``: the episodes (the bulk of FSCL's extra cost) run under
  ``torch.autocast``; the slow weights and their updates stay fp32. A speed option only.
* [ours] Few-shot generalisation is read from ``phi``: :meth:`slow_weights` swaps them
  into the model; the ``heldout_fewshot`` evaluation column uses it.

With ``fast_strength=0``, ``slow_step=0`` and ``meta=False`` the plugin does not touch
training: the host strategy trains exactly as without it.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from torch import Tensor, nn

from ..models.amp import autocast_context, check_autocast
from ..streams.data import TensorImageDataset, dataset_targets
from ..streams.episodes import few_shot_episodes
from ._features import (
    _Features,
    class_mean_features,
    class_means,
    extract_features,
    lower_features,
    select_parameters,
    split_features,
    support_prototypes,
)
from ._importance import IMPORTANCE_ESTIMATORS, PathIntegral, dataset_importance
from ._session import training_session
from .replay import ClassBalancedReplayPlugin

__all__ = ["FastSlowConsolidationPlugin"]

_STATE_VERSION = 1
_NORM_STATS = ("episode", "frozen")  # BatchNorm statistics during meta-learning
_ROW_CHUNK = 256  # rows of stored features per chunk of the rows' training: (256, 1064) fp32 logits ~1 MiB, a core's L2
_HEAD = ("weight", "bias")  # FSCILNet's classifier rows: never consolidated by the penalty
SlowFilter = str | Sequence[str] | Callable[[str, nn.Parameter], bool] | None


class FastSlowConsolidationPlugin(SupervisedPlugin):
    """Fast/slow weights with two-step consolidation, for any Avalanche supervised strategy.

    Needs an :class:`~avalanche_fscl.models.FSCILNet`-like model (``features(x)``, a cosine
    or linear classifier ``weight`` with one row per class, ``set_class_weights``) and FSCIL
    experiences (``current_experience`` = session, ``classes_in_this_experience``).

    Args:
        slow: which parameters have slow weights: a module-name prefix (``"backbone"``), a
            list of prefixes, a predicate ``(name, param) -> bool``, or ``None`` (no slow
            weights: "fast only").
        fast_strength: step 1 strength (>= 0; dimensionless, importance normalised to mean
            1); 0 disables step 1 (no penalty, classifier rows left to the strategy).
        slow_step: step 2 step size ``beta`` in ``[0, 1]``; 0 disables step 2.
        slow_strength: step 2 damping ``gamma`` (>= 0) by the slow weights' importance.
        importance: ``"fisher"``, ``"mas"`` or ``"si"`` (SI needs every session trained in the
            loop: a base session loaded from a cache has no path to integrate).
        meta: meta-learn the slow weights at the end of the base session. Measured here: it helps
            over an under-trained base (the configs' 8 epochs on Tiny ImageNet, where it acts as
            more training) and costs accuracy over a base trained to its validated length (12 /
            48 epochs, both streams' validation protocols): with a well-trained backbone, ``False``.
        meta_episodes: number of episodes (>= 1). meta_ways, meta_shots, meta_queries: N-way
            K-shot tasks with Q queries per class. meta_inner_steps: inner SGD steps on the
            support set (0: ProtoNet). meta_inner_lr, meta_lr: inner and outer learning rates
            (outer: SGD, momentum 0.9, cosine decay over the episodes).
        first_order: ignore second derivatives through the inner steps (FOMAML).
        meta_scale: temperature of the cosine-prototype logits in episodes.
        meta_norm_stats: BatchNorm during meta-learning: ``"episode"`` (train mode: each
            episode's batch statistics, running statistics updated) or ``"frozen"`` (eval
            mode: the statistics of the supervised base training, kept; the shipped Omniglot and
            Tiny ImageNet configs use it, chosen on their validation protocols).
        session_meta_episodes: episodes of slow-weight meta-learning on each incremental
            session's shots (>= 0; 0 = off; ours, see the module doc).
        session_meta_lr: their SGD learning rate (> 0; momentum 0.9, cosine over the episodes).
        session_meta_memory: samples per class kept for those episodes (>= 0; 0 = each session's
            own shots only; ours, see the module doc). Episodes: ``min(meta_ways, classes
            seen)``-way, half of the smallest class's stored samples as support. Memory cost:
            one input per stored sample (Tiny ImageNet at 32 px: 12 KiB; 20 per class over 200
            classes: 47 MiB), also in :meth:`state_dict`.
        fast_from_slow: after every incremental session, reset the fast weights to the slow
            ones and rebuild every class's row from the session memory (ours, see the module
            doc; needs ``session_meta_memory > 0``).
        row_steps: with ``fast_from_slow``, full-batch steps that train the rebuilt rows on the
            memory's features (>= 0; 0 = prototype rows; ours, see the module doc).
        row_lr: their SGD learning rate (> 0; momentum 0.9, constant).
        row_memory: features per class stored for ``row_steps`` without ``fast_from_slow`` (>= 0;
            0 = off; ours, see the module doc).
        base_row_steps: with ``row_memory``, the rows' steps at the end of the base session
            (>= 0; ``None`` = ``row_steps``). Incremental sessions start from rows already fitted,
            so they can take fewer steps than the base session, whose cost is budgeted apart.
        row_logit_adjust: ``None`` (default): the rows' cross-entropy weights each class by one
            over its stored features. A float ``tau >= 0``: no weights, ``tau * log(prior)`` added
            to the training logits instead (logit adjustment; 0 = plain cross-entropy; ours,
            see the module doc). Only with ``row_steps`` > 0.
        meta_cache: run the episodes through the slow part of the network only (ours, for
            speed). ``model.features`` is cut (``torch.fx``) before the first layer with slow
            parameters; that frozen lower part is a fixed function (needs
            ``meta_norm_stats="frozen"``), so its outputs for every base image are computed once,
            from the un-augmented images (the evaluation transform), and each episode costs only
            the upper layers' forward and backward. Same episodes and, for a dataset without
            augmentation, the same result as without the cache (up to float rounding). Memory: the
            cut's activations per base image (Conv4 at 32 px cut before block 3: 64 x 8 x 8
            floats = 16 KiB, 245 MB for 15,000 images).
        meta_autocast: mixed precision of the meta-learning episodes (base and incremental
            sessions): ``None`` (fp32) or ``"bf16"`` (``torch.autocast`` on the model's device; the
            slow weights, their optimizer and the episode's cosine logits stay fp32). Ours, for
            speed: on a CPU with AMX a Conv4 episode step takes about half the time (where
            measured: ``benchmarks/README.md``), on CPUs without bf16 units it is slower. Episodes
            then differ from fp32 by bf16 rounding.
        batch_size: batch size of feature and importance passes.
        seed: seeds the meta-learning episodes (the same episodes after a resume).

    Raises:
        ValueError: an unknown ``importance``, a negative strength, a step outside
            ``[0, 1]``, non-positive meta settings, a ``slow`` filter that selects no
            parameter, or a model without the expected parts (at the first training call).
    """

    def __init__(
        self,
        slow: SlowFilter = "backbone",
        fast_strength: float = 1000.0,
        slow_step: float = 0.1,
        slow_strength: float = 1.0,
        importance: str = "fisher",
        meta: bool = True,
        meta_episodes: int = 200,
        meta_ways: int = 20,
        meta_shots: int = 5,
        meta_queries: int = 5,
        meta_inner_steps: int = 1,
        meta_inner_lr: float = 0.05,
        meta_lr: float = 0.01,
        first_order: bool = True,
        meta_scale: float = 10.0,
        meta_norm_stats: str = "episode",
        meta_cache: bool = False,
        session_meta_episodes: int = 0,
        session_meta_lr: float = 0.003,
        session_meta_memory: int = 0,
        fast_from_slow: bool = False,
        row_steps: int = 0,
        row_lr: float = 0.1,
        row_memory: int = 0,
        base_row_steps: int | None = None,
        row_logit_adjust: float | None = None,
        meta_autocast: str | None = None,
        batch_size: int = 256,
        seed: int = 0,
    ):
        super().__init__()
        if importance not in IMPORTANCE_ESTIMATORS:
            raise ValueError(f"importance={importance!r}: allowed {', '.join(IMPORTANCE_ESTIMATORS)}")
        for name, v in [("fast_strength", fast_strength), ("slow_strength", slow_strength),
                        ("meta_inner_lr", meta_inner_lr), ("meta_inner_steps", meta_inner_steps)]:
            if not (isinstance(v, (int, float)) and v >= 0):
                raise ValueError(f"{name} must be >= 0, got {v!r}")
        if not (isinstance(slow_step, (int, float)) and 0 <= slow_step <= 1):
            raise ValueError(f"slow_step must be in [0, 1], got {slow_step!r}")
        for name, v in [("meta_episodes", meta_episodes), ("meta_ways", meta_ways), ("meta_shots", meta_shots),
                        ("meta_queries", meta_queries), ("batch_size", batch_size)]:
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not isinstance(session_meta_episodes, int) or isinstance(session_meta_episodes, bool) or session_meta_episodes < 0:
            raise ValueError(f"session_meta_episodes must be an integer >= 0, got {session_meta_episodes!r}")
        if session_meta_episodes and slow is None:
            raise ValueError("session_meta_episodes > 0 needs slow weights (slow is None)")
        if not isinstance(session_meta_memory, int) or isinstance(session_meta_memory, bool) or session_meta_memory < 0:
            raise ValueError(f"session_meta_memory must be an integer >= 0, got {session_meta_memory!r}")
        if session_meta_memory and not session_meta_episodes:
            raise ValueError("session_meta_memory > 0 needs session_meta_episodes > 0 (it only feeds those episodes)")
        if not isinstance(fast_from_slow, bool):
            raise ValueError(f"fast_from_slow must be True or False, got {fast_from_slow!r}")
        if fast_from_slow and not session_meta_memory:
            raise ValueError("fast_from_slow=True needs session_meta_memory > 0 (the samples every class's row is rebuilt from)")
        if not isinstance(row_steps, int) or isinstance(row_steps, bool) or row_steps < 0:
            raise ValueError(f"row_steps must be an integer >= 0, got {row_steps!r}")
        if not isinstance(row_memory, int) or isinstance(row_memory, bool) or row_memory < 0:
            raise ValueError(f"row_memory must be an integer >= 0, got {row_memory!r}")
        if row_steps and not (fast_from_slow or row_memory):
            raise ValueError("row_steps > 0 needs fast_from_slow=True (it trains the rows rebuilt from the memory) "
                             "or row_memory > 0 (stored features)")
        if base_row_steps is not None and (not isinstance(base_row_steps, int) or isinstance(base_row_steps, bool)
                                           or base_row_steps < 0):
            raise ValueError(f"base_row_steps must be an integer >= 0 or None, got {base_row_steps!r}")
        if base_row_steps is not None and not row_memory:
            raise ValueError("base_row_steps needs row_memory > 0 (it sets the base session's steps on the stored features)")
        if row_logit_adjust is not None:
            if isinstance(row_logit_adjust, bool) or not isinstance(row_logit_adjust, (int, float)) \
                    or not row_logit_adjust >= 0:
                raise ValueError(f"row_logit_adjust must be None or a number >= 0, got {row_logit_adjust!r}")
            if not row_steps:
                raise ValueError("row_logit_adjust needs row_steps > 0 (it sets the rows' training loss)")
        if row_memory and not row_steps:
            raise ValueError("row_memory > 0 needs row_steps > 0 (it only feeds the rows' training)")
        if row_memory and fast_from_slow:
            raise ValueError("row_memory > 0 and fast_from_slow=True exclude each other: with the restart the rows "
                             "learn the re-embedded session memory")
        for name, v in [("meta_lr", meta_lr), ("meta_scale", meta_scale), ("session_meta_lr", session_meta_lr),
                        ("row_lr", row_lr)]:
            if not (isinstance(v, (int, float)) and v > 0):
                raise ValueError(f"{name} must be > 0, got {v!r}")
        self.meta_autocast = check_autocast(meta_autocast, "meta_autocast", (None, "bf16"))
        if meta_norm_stats not in _NORM_STATS:
            raise ValueError(f"meta_norm_stats={meta_norm_stats!r}: allowed {', '.join(_NORM_STATS)}")
        if not isinstance(meta_cache, bool):
            raise ValueError(f"meta_cache must be True or False, got {meta_cache!r}")
        if meta_cache and meta_norm_stats != "frozen":
            raise ValueError(f"meta_cache=True needs meta_norm_stats='frozen' (fixed lower layers), got {meta_norm_stats!r}")
        if slow is None and (meta or slow_step > 0):
            raise ValueError("slow=None (no slow weights) needs meta=False and slow_step=0")
        if isinstance(slow, str):
            slow = (slow,)
        self.slow_filter = slow
        self.fast_strength, self.slow_step, self.slow_strength = float(fast_strength), float(slow_step), float(slow_strength)
        self.importance = importance
        self.meta = meta
        self.meta_episodes, self.meta_ways, self.meta_shots, self.meta_queries = meta_episodes, meta_ways, meta_shots, meta_queries
        self.meta_inner_steps, self.meta_inner_lr, self.meta_lr = int(meta_inner_steps), float(meta_inner_lr), float(meta_lr)
        self.first_order, self.meta_scale, self.meta_norm_stats = first_order, float(meta_scale), meta_norm_stats
        self.meta_cache = meta_cache
        self.session_meta_episodes, self.session_meta_lr = session_meta_episodes, float(session_meta_lr)
        self.batch_size, self.seed = batch_size, int(seed)
        # the slow weights' episodic memory (session_meta_memory); its store() is the replay plugin's
        self._memory = ClassBalancedReplayPlugin(session_meta_memory, seed=self.seed) if session_meta_memory else None
        self.fast_from_slow = fast_from_slow
        self.row_steps, self.row_lr = row_steps, float(row_lr)
        self.row_memory, self.base_row_steps = row_memory, base_row_steps
        self.row_logit_adjust = None if row_logit_adjust is None else float(row_logit_adjust)
        self._row_picker = ClassBalancedReplayPlugin(row_memory, seed=self.seed + 104729) if row_memory else None
        self.row_feats: Tensor | None = None  # (N, D) stored features (row_memory), CPU
        self.row_labels: Tensor | None = None  # (N,)

        self.slow_names: list[str] | None = None  # parameters with slow weights
        self.slow: dict[str, Tensor] = {}  # phi: parameters and buffers
        self.anchor: dict[str, Tensor] = {}  # theta*: fast weights after the last session
        self.omega: dict[str, Tensor] = {}  # accumulated importance (mean 1)
        self.sessions = 0  # sessions consolidated
        self._old_rows: tuple[Tensor, Tensor] | None = None
        self._si = PathIntegral()

    # ----------------------------------------------------------------- helpers
    @property
    def _step1(self) -> bool:
        return self.fast_strength > 0

    def _check_model(self, model: nn.Module) -> None:
        needed = ("features", "set_class_weights", "weight") + (("logits",) if self.row_steps else ())
        missing = [a for a in needed if not hasattr(model, a)]
        if missing:
            raise ValueError(
                f"FastSlowConsolidationPlugin needs an FSCILNet-like model ({', '.join(needed)}); "
                f"model {type(model).__name__} lacks {', '.join(missing)}"
            )
        if self.slow_names is None:
            names = [] if self.slow_filter is None else select_parameters(model, self.slow_filter, "slow")
            if self.meta and self.meta_cache:
                split_features(model, names, argument="meta_cache")  # fail before training, not after
            self.slow_names = names

    def _slow_keys(self, model: nn.Module) -> list[str]:
        """Slow parameter names plus the buffers of the modules that own them."""
        owners = {n.rsplit(".", 1)[0] if "." in n else "" for n in self.slow_names or []}
        buffers = [n for n, _ in model.named_buffers() if (n.rsplit(".", 1)[0] if "." in n else "") in owners]
        return [*(self.slow_names or []), *buffers]

    def _consolidated(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Parameters step 1 penalises: all but the classifier rows."""
        return {n: p for n, p in model.named_parameters() if n not in _HEAD}

    @contextlib.contextmanager
    def slow_weights(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the slow weights into ``model`` (restored on exit).

        Without slow weights (``slow=None`` or before the base session ends) the model is
        used as it is.
        """
        if not self.slow:
            yield model
            return
        state = dict(model.state_dict(keep_vars=True))
        saved = {k: state[k].detach().clone() for k in self.slow}
        try:
            with torch.no_grad():
                for k, v in self.slow.items():
                    state[k].copy_(v.to(state[k].device))
            yield model
        finally:
            with torch.no_grad():
                for k, v in saved.items():
                    state[k].copy_(v)

    # ---------------------------------------------------------------- callbacks
    def before_training(self, strategy, *args, **kwargs):
        self._check_model(strategy.model)

    def before_training_exp(self, strategy, *args, **kwargs):
        s = training_session(strategy)
        model = strategy.model
        self._old_rows = None
        if s > 0 and self._step1:
            exp = strategy.experience
            new = sorted(int(c) for c in exp.classes_in_this_experience)
            seen = sorted(int(c) for c in exp.classes_seen_so_far)
            old = [c for c in seen if c not in new]
            self._set_prototype_rows(model, exp.dataset.eval(), new, strategy.device)
            if old:
                idx = torch.tensor(old, device=model.weight.device)
                self._old_rows = (idx, model.weight.detach()[idx].clone())
        if self.importance == "si" and self._active(s):
            self._si.start(self._consolidated(model))

    def before_training_epoch(self, strategy, *args, **kwargs):
        self._freeze_norm_stats(strategy)

    def before_training_iteration(self, strategy, *args, **kwargs):
        self._freeze_norm_stats(strategy)

    def _freeze_norm_stats(self, strategy) -> None:
        if training_session(strategy) > 0 and self._step1:
            for m in strategy.model.modules():
                if isinstance(m, nn.modules.batchnorm._NormBase):
                    m.eval()

    def before_update(self, strategy, *args, **kwargs):
        if self.importance == "si" and self._active(training_session(strategy)):
            self._si.step_before(self._consolidated(strategy.model))

    def after_update(self, strategy, *args, **kwargs):
        if training_session(strategy) > 0 and self._step1 and self.anchor:
            self._proximal_step(strategy)
        if self._old_rows is not None:
            idx, rows = self._old_rows
            with torch.no_grad():
                strategy.model.weight[idx] = rows
        if self.importance == "si" and self._active(training_session(strategy)):
            self._si.step_after(self._consolidated(strategy.model))

    def after_training_exp(self, strategy, *args, **kwargs):
        s = training_session(strategy)
        model, exp = strategy.model, strategy.experience
        classes = sorted(int(c) for c in exp.classes_in_this_experience)
        if s == 0 and self.meta:
            self._meta_learn(model, exp, strategy.device)
        if self._step1 or (s == 0 and self.meta):  # a prototype classifier (the features changed)
            self._set_prototype_rows(model, exp.dataset.eval(), classes, strategy.device)
        if self._active(s):
            self._update_importance(strategy, exp)
            self.anchor = {n: p.detach().clone() for n, p in self._consolidated(model).items()}
        if self.slow_filter is not None:
            keys = self._slow_keys(model)
            state = model.state_dict()
            if s == 0 or not self.slow:
                self.slow = {k: state[k].detach().clone() for k in keys}
            elif self.slow_step > 0:
                self._consolidate_slow(state)
            if self._memory is not None:
                self._memory.store(exp.dataset, classes, s)
            if s > 0 and self.session_meta_episodes:
                self._session_meta_learn(model, exp, classes, s, strategy.device)
            if s > 0 and self.fast_from_slow:
                self._restart_fast(model, strategy.device)
        if self.row_memory:
            self._store_row_features(model, exp, classes, s, strategy.device)
            steps = self.base_row_steps if s == 0 and self.base_row_steps is not None else self.row_steps
            self._train_rows(model, self.row_feats.to(strategy.device), self.row_labels.to(strategy.device), steps)
        self._old_rows = None
        self.sessions = s + 1

    # ------------------------------------------------------------ the two steps
    def _active(self, session: int) -> bool:
        """Importance is needed by step 1 (any session) or step 2's damping."""
        return self._step1 or (self.slow_step > 0 and self.slow_strength > 0)

    def _update_importance(self, strategy, exp) -> None:
        model = strategy.model
        params = self._consolidated(model)
        if self.importance == "si":
            new = self._si.finish(params)
        else:
            new = dataset_importance(self.importance, model, exp.dataset.eval(), list(params),
                                     self.batch_size, strategy.device)
        total = {n: self.omega.get(n, torch.zeros_like(v)).to(v.device) + v for n, v in new.items()}
        mean = torch.cat([v.flatten() for v in total.values()]).mean().clamp_min(1e-12)
        self.omega = {n: (v / mean).detach() for n, v in total.items()}

    @torch.no_grad()
    def _proximal_step(self, strategy) -> None:
        """Step 1: ``theta <- theta* + (theta - theta*) / (1 + 2 lr lambda W)`` per parameter."""
        lrs = {id(p): g["lr"] for g in strategy.optimizer.param_groups for p in g["params"]}
        for n, p in self._consolidated(strategy.model).items():
            lr = lrs.get(id(p))
            if lr is None or n not in self.anchor:
                continue
            a, w = self.anchor[n].to(p.device), self.omega[n].to(p.device)
            p.copy_(a + (p - a) / (1.0 + 2.0 * lr * self.fast_strength * (1.0 + w)))

    @torch.no_grad()
    def _consolidate_slow(self, state: dict[str, Tensor]) -> None:
        """Step 2: ``phi <- phi + beta (theta - phi) / (1 + gamma W_phi)``."""
        for k, phi in self.slow.items():
            theta = state[k].detach().to(phi.device)
            if not phi.is_floating_point():
                phi.copy_(theta)  # counters (BatchNorm's num_batches_tracked)
                continue
            step = self.slow_step * (theta - phi)
            if k in self.omega:
                step = step / (1.0 + self.slow_strength * self.omega[k].to(phi.device))
            phi.add_(step)

    @torch.no_grad()
    def _restart_fast(self, model: nn.Module, device) -> None:
        """``fast_from_slow``: ``theta <- phi``, step 1's anchors there, every row from the memory."""
        state = model.state_dict(keep_vars=True)
        for k, phi in self.slow.items():
            state[k].copy_(phi.to(state[k].device))
        memory = TensorImageDataset(self._memory.memory_x, self._memory.memory_y)
        classes = self._memory.memory_classes()
        if not self.row_steps:
            self._set_prototype_rows(model, memory, classes, device)
        else:  # one feature pass for the prototypes and the rows' training (same batches, same bits)
            feats, labels = extract_features(model, memory, self.batch_size, device)
            batches = zip(feats.split(self.batch_size), labels.split(self.batch_size))
            model.set_class_weights(classes, F.normalize(class_means(batches, classes, device), dim=1))
            self._train_rows(model, feats, labels)
        if self.anchor:
            self.anchor = {n: p.detach().clone() for n, p in self._consolidated(model).items()}

    def _store_row_features(self, model: nn.Module, exp, classes: list[int], session: int, device) -> None:
        """``row_memory``: the features of up to that many samples of each of ``classes``."""
        picker = self._row_picker
        picker.memory_x = picker.memory_y = None  # only the choice is reused; inputs are not kept
        picker.store(exp.dataset, classes, session)
        if picker.memory_y is None:
            return
        feats, labels = extract_features(model, TensorImageDataset(picker.memory_x, picker.memory_y),
                                         self.batch_size, device)
        picker.memory_x = picker.memory_y = None
        feats, labels = feats.float().cpu(), labels.cpu()
        if self.row_labels is not None:
            keep = ~torch.isin(self.row_labels, labels.unique())
            feats, labels = torch.cat([self.row_feats[keep], feats]), torch.cat([self.row_labels[keep], labels])
        self.row_feats, self.row_labels = feats, labels

    @torch.enable_grad()
    def _train_rows(self, model: nn.Module, feats: Tensor, labels: Tensor, steps: int | None = None) -> None:
        """``row_steps``: the head (``weight``, ``bias``) learns ``feats (N, D)`` with ``labels (N,)``."""
        head = [p for p in (model.weight, getattr(model, "bias", None)) if p is not None]
        params = list(model.parameters())
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(any(p is h for h in head))
        opt = torch.optim.SGD(head, lr=self.row_lr, momentum=0.9)
        # class-balanced when the classes store unequal numbers (a base class 3x a 5-shot one):
        # re-weighted, or with the log prior added to the training logits (row_logit_adjust)
        counts = torch.bincount(labels, minlength=int(model.weight.shape[0])).float()
        present = counts[counts > 0]
        unequal = not bool((present == present[0]).all())
        weight, shift = None, None
        if unequal and self.row_logit_adjust is None:
            weight = 1.0 / counts.clamp_min(1.0)
        elif unequal and self.row_logit_adjust:
            shift = self.row_logit_adjust * torch.log(counts.clamp_min(1.0) / counts.sum())  # (classes,)

        def logits(f: Tensor) -> Tensor:
            out = model.logits(f)
            return out if shift is None else out + shift
        feats = feats.detach()
        # the (N, classes) logits of a large memory are processed in row chunks that stay in cache
        # (the same loss and gradient; 15k features x 1k classes on one AMD EPYC thread: about 3x
        # faster in chunks of 1,024 than in one batch, chunks of 256 another 1.2-1.4x)
        chunks = list(zip(feats.split(_ROW_CHUNK), labels.split(_ROW_CHUNK)))
        total = float(len(labels)) if weight is None else weight[labels].sum()
        try:
            for _ in range(self.row_steps if steps is None else steps):
                opt.zero_grad(set_to_none=True)
                if len(chunks) == 1:
                    F.cross_entropy(logits(feats), labels, weight=weight).backward()
                else:
                    for f, y in chunks:
                        (F.cross_entropy(logits(f), y, weight=weight, reduction="sum") / total).backward()
                opt.step()
        finally:
            for p, f in zip(params, flags):
                p.requires_grad_(f)
                p.grad = None

    def _set_prototype_rows(self, model: nn.Module, dataset, classes: list[int], device) -> None:
        means = class_mean_features(model, dataset, classes, self.batch_size, device)
        model.set_class_weights(classes, F.normalize(means, dim=1))

    # ------------------------------------------------------------ meta-learning
    def _meta_learn(self, model: nn.Module, exp, device) -> None:
        """Meta-learning of the slow parameters on the base classes (the base session's)."""
        classes = sorted(int(c) for c in exp.classes_in_this_experience)
        data = exp.dataset.eval() if self.meta_cache else exp.dataset.train()
        self._episodic(model, data, classes, min(self.meta_ways, len(classes)), self.meta_shots, self.meta_queries,
                       self.meta_episodes, self.meta_lr, self.seed, device)

    def _session_meta_learn(self, model: nn.Module, exp, classes: list[int], session: int, device) -> None:
        """Slow weights meta-learn on an incremental session's shots (or on the memory of every
        class seen, with ``session_meta_memory``); the fast weights are kept."""
        if self._memory is not None:
            data = TensorImageDataset(self._memory.memory_x, self._memory.memory_y)
            classes = self._memory.memory_classes()
            ways = min(self.meta_ways, len(classes))
        else:
            data = exp.dataset.eval() if self.meta_cache else exp.dataset.train()
            ways = len(classes)
        labels = dataset_targets(data)
        n = min(int((labels == c).sum()) for c in classes)
        if n < 2 or ways < 2:
            return  # no support/query split (1 shot) or no contrast (1 class)
        shots = n // 2
        with self.slow_weights(model):
            self._episodic(model, data, classes, ways, shots, n - shots, self.session_meta_episodes,
                           self.session_meta_lr, self.seed + 7919 * session, device)
            state = model.state_dict()
            with torch.no_grad():
                for k, phi in self.slow.items():
                    phi.copy_(state[k].to(phi.device))

    def _episodic(self, model: nn.Module, data, classes: list[int], ways: int, shots: int, queries: int,
                  n_episodes: int, lr: float, seed: int, device) -> None:
        """First-order episodic meta-learning of the model's slow parameters, in place (SGD with
        momentum 0.9 and a cosine-decayed ``lr``; ``ways``-way ``shots``-shot episodes of ``classes``)."""
        episodes = few_shot_episodes(data, ways, shots, queries, n_episodes, seed=seed, classes=classes)
        names = list(self.slow_names or [])
        params = dict(model.named_parameters())
        slow = [params[n] for n in names]
        frozen = {n: p.requires_grad for n, p in params.items()}
        for n, p in params.items():
            p.requires_grad_(n in names)
        if self.meta_cache:
            split = split_features(model, names, argument="meta_cache")
            net, keys = split.upper, [split.names[n] for n in names]
            cached = lower_features(split.lower, model, data, self.batch_size, device)
        else:
            net, keys, cached = _Features(model), [f"m.{n}" for n in names], None
        support_y = torch.arange(ways, device=device).repeat_interleave(shots)
        query_y = torch.arange(ways, device=device).repeat_interleave(queries)

        def episode(i: int) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
            if cached is None:
                ep = episodes[i]
                return (ep.support_x.to(device),), (ep.query_x.to(device),)
            idx = torch.from_numpy(episodes.indices(i)[1]).to(device)
            return tuple(c[idx[:, :shots].reshape(-1)] for c in cached), tuple(c[idx[:, shots:].reshape(-1)] for c in cached)

        opt = torch.optim.SGD(slow, lr=lr, momentum=0.9)
        n_ep = len(episodes)
        was_training = model.training
        model.train(self.meta_norm_stats == "episode")
        try:
            for i in range(n_ep):
                for g in opt.param_groups:
                    g["lr"] = 0.5 * lr * (1 + math.cos(math.pi * i / n_ep))
                sx, qx = episode(i)
                fast = dict(zip(keys, slow))
                for _ in range(self.meta_inner_steps):
                    loss = self._episode_loss(net, fast, sx, support_y, None, support_y, ways)
                    grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not self.first_order)
                    fast = {k: w - self.meta_inner_lr * (g.detach() if self.first_order else g)
                            for (k, w), g in zip(fast.items(), grads)}
                loss = self._episode_loss(net, fast, sx, support_y, qx, query_y, ways)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        finally:
            model.train(was_training)
            for n, p in params.items():
                p.requires_grad_(frozen[n])
                p.grad = None

    def _episode_loss(self, net: nn.Module, weights: dict[str, Tensor], sx: tuple[Tensor, ...], sy: Tensor,
                      qx: tuple[Tensor, ...] | None, qy: Tensor, ways: int) -> Tensor:
        """Cross-entropy of the queries (the support itself when ``qx`` is None) under cosine
        logits to the support prototypes; ``sx``/``qx`` are the inputs of ``net``."""
        inputs = sx if qx is None else tuple(torch.cat([s, q]) for s, q in zip(sx, qx))
        with autocast_context(qy.device, self.meta_autocast):
            feats = torch.func.functional_call(net, weights, inputs, strict=False)
        n = len(sy)
        fs, fq = feats[:n], (feats if qx is None else feats[n:])
        logits = self.meta_scale * F.normalize(fq.float(), dim=1) @ support_prototypes(fs, sy, ways).T
        return F.cross_entropy(logits, qy)

    # -------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Slow weights, anchors, importance, the session count, the session memory and the stored
        row features (CPU tensors)."""
        cpu = lambda d: {k: v.detach().cpu().clone() for k, v in d.items()}  # noqa: E731
        return {
            "version": _STATE_VERSION,
            "slow_names": None if self.slow_names is None else list(self.slow_names),
            "slow": cpu(self.slow), "anchor": cpu(self.anchor), "omega": cpu(self.omega),
            "sessions": self.sessions,
            "memory": None if self._memory is None else self._memory.state_dict(),
            "row_feats": self.row_feats, "row_labels": self.row_labels,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported FastSlowConsolidationPlugin state version {state.get('version')!r}")
        names = state["slow_names"]
        self.slow_names = None if names is None else list(names)
        self.slow = {k: v.clone() for k, v in state["slow"].items()}
        self.anchor = {k: v.clone() for k, v in state["anchor"].items()}
        self.omega = {k: v.clone() for k, v in state["omega"].items()}
        self.sessions = int(state["sessions"])
        if (state.get("memory") is None) != (self._memory is None):
            raise ValueError(f"state has {'no ' if state.get('memory') is None else ''}session memory; this plugin has "
                             f"session_meta_memory={0 if self._memory is None else self._memory.mem_per_class}")
        if self._memory is not None:
            self._memory.load_state_dict(state["memory"])
        rows = state.get("row_labels")  # absent in states written before row_memory existed
        if (rows is not None) and not self.row_memory:
            raise ValueError("state has stored row features; this plugin has row_memory=0")
        self.row_feats = None if rows is None else state["row_feats"].clone()
        self.row_labels = None if rows is None else rows.clone()
