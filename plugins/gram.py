"""GRAMPlugin: meta-learned prompt initialisation and gradient regulation for prompt tuning.

    model = PromptedCLIP(clip, tokenizer, text_prompt=True, n_ctx=4)
    strategy = Naive(model=model, optimizer=SGD(model.prompt_parameters(), lr=2e-3),
                     plugins=[GRAMPlugin(meta_checkpoint="runs/gram/coop/gram.pt")], ...)

GRAM (Li et al., ICCV 2023) as a plugin for any Avalanche strategy whose model is (or contains)
a :class:`~avalanche_fscl.models.PromptedCLIP`:

- before the first training session, the prompts are set to the meta-learned initialisation;
- at every optimisation step of every session (``before_update``: after the backward pass,
  before the optimizer), each prompt's gradient ``g`` is replaced by the frozen regulator's
  ``psi(g)`` (the paper's downstream use, as in SUPMER), then, with ``clip_grad``, the prompt
  gradients are rescaled to a global L2 norm of at most ``clip_grad`` (ours: it bounds the update
  actually taken; without it prompt tuning on a CLIP with small prompt gradients and a large lr can
  collapse, see benchmarks/results/base_to_new_rn);
- before every training and evaluation experience, the class-name classifier grows with the
  experience's ``class_names`` (or the ``class_names`` given here, for streams without them).

CLIP stays frozen, so old classes keep their text embeddings (with shared prompts they move
with the prompt; class-specific prompts of old classes get no gradient from new sessions).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from avalanche.core import SupervisedPlugin

from ..models.gram import build_regulator, load_gram_checkpoint
from ..models.prompts import PromptedCLIP
from ..models.regulator import GradientRegulator

__all__ = ["GRAMPlugin", "find_prompted_clip"]


def find_prompted_clip(model: torch.nn.Module) -> PromptedCLIP:
    """The :class:`PromptedCLIP` in ``model`` (itself or a submodule)."""
    for m in model.modules():
        if isinstance(m, PromptedCLIP):
            return m
    raise ValueError(f"GRAMPlugin: the strategy's model ({type(model).__name__}) holds no PromptedCLIP")


class GRAMPlugin(SupervisedPlugin):
    """Gradient-regulated meta-prompt learning (see the module docstring).

    Args:
        meta_checkpoint: a ``gram.pt`` from ``meta_train_gram`` / ``avalanche-fscl meta-train-gram``
            (prompt init + regulator); ``None`` = no init, identity regulator unless
            ``regulator`` is given (i.e. plain prompt tuning).
        regulator: a :class:`GradientRegulator` to use instead of the checkpoint's.
        load_init: set the prompts to the checkpoint's initialisation before the first session.
        regulate: apply the regulator to prompt gradients (off: init only, an ablation).
        class_names: ``{class id: name}`` for streams whose experiences carry no ``class_names``.
        clip_grad: clip the prompt gradients (after the regulator) to this global L2 norm; ``None``
            (default) leaves them as they are.
    """

    def __init__(self, meta_checkpoint: str | None = None, regulator: GradientRegulator | None = None,
                 load_init: bool = True, regulate: bool = True, class_names: Mapping[int, str] | None = None,
                 clip_grad: float | None = None):
        super().__init__()
        if clip_grad is not None and not clip_grad > 0:
            raise ValueError(f"clip_grad={clip_grad!r}: must be > 0 (or None for no clipping)")
        self.clip_grad = None if clip_grad is None else float(clip_grad)
        self.meta_checkpoint = meta_checkpoint
        self.ckpt = load_gram_checkpoint(meta_checkpoint) if meta_checkpoint else None
        if regulator is None and self.ckpt is not None:
            regulator = build_regulator(self.ckpt)
        self.regulator = regulator
        if self.regulator is not None:
            self.regulator.requires_grad_(False).eval()
        self.load_init, self.regulate = bool(load_init), bool(regulate)
        self.class_names = dict(class_names or {})
        self.init_loaded = False

    # ------------------------------------------------------------------ callbacks
    def _grow(self, strategy: Any) -> None:
        exp = strategy.experience
        names = getattr(exp, "class_names", None)
        if not names and self.class_names:
            ids = getattr(exp, "classes_seen_so_far", None) or getattr(exp, "classes_in_this_experience", None)
            if ids is None:
                ids = {int(t) for t in exp.dataset.targets}
            missing = sorted(int(c) for c in ids if int(c) not in self.class_names)
            if missing:
                raise ValueError(f"GRAMPlugin: class_names has no name for classes {missing}")
            names = {int(c): self.class_names[int(c)] for c in ids}
        if names:
            find_prompted_clip(strategy.model).add_classes(names)

    def before_training(self, strategy: Any, *args, **kwargs) -> None:
        net = find_prompted_clip(strategy.model)
        if self.ckpt is not None and self.load_init and not self.init_loaded:
            flags = self.ckpt.get("prompt_flags", {})
            for key in ("text_prompt", "visual_prompt"):
                if key in flags and bool(flags[key]) != getattr(net, key):
                    raise ValueError(
                        f"GRAMPlugin: meta_checkpoint={self.meta_checkpoint!r} was meta-trained with {key}={flags[key]}, "
                        f"the model has {key}={getattr(net, key)}")
            net.load_prompt_state(self.ckpt["prompts"])
        self.init_loaded = True
        if self.regulator is not None:
            self.regulator.to(next(net.parameters()).device)

    def before_training_exp(self, strategy: Any, *args, **kwargs) -> None:
        self._grow(strategy)

    def before_eval_exp(self, strategy: Any, *args, **kwargs) -> None:
        self._grow(strategy)

    @torch.no_grad()
    def before_update(self, strategy: Any, *args, **kwargs) -> None:
        if self.regulate and self.regulator is not None:
            self.regulator.regulate_(find_prompted_clip(strategy.model))
        if self.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(find_prompted_clip(strategy.model).prompt_parameters(), self.clip_grad)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"init_loaded": self.init_loaded}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.init_loaded = bool(state["init_loaded"])
