"""Which session a strategy is in: the one definition every plugin and template reads."""

from __future__ import annotations

from typing import Any

__all__ = ["training_session"]


def training_session(strategy: Any) -> int:
    """Index of the session (training experience) ``strategy`` is training.

    FSCIL streams number their experiences by session (``current_experience``: 0 = base
    session), so this is ``strategy.experience.current_experience``; 0 when the experience
    has no index. Read it in training callbacks (``before_training_exp`` ..
    ``after_training_exp``); during evaluation ``strategy.experience`` is a test experience.
    """
    exp = getattr(strategy, "experience", None)
    return int(getattr(exp, "current_experience", 0) or 0) if exp is not None else 0
