"""EWC with a checkpointable state (Avalanche's ``EWCPlugin`` + ``state_dict``)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from avalanche.training.plugins import EWCPlugin
from avalanche.training.utils import ParamData, copy_params_dict

__all__ = ["StatefulEWCPlugin"]

_STATE_VERSION = 1


class StatefulEWCPlugin(EWCPlugin):
    """Elastic Weight Consolidation whose state survives a checkpoint.

    Same constructor and the same penalty and importance computation as Avalanche's
    :class:`~avalanche.training.plugins.EWCPlugin` (diagonal Fisher from an extra pass over
    ``strategy.experience.dataset`` after each experience), plus :meth:`state_dict` /
    :meth:`load_state_dict` for ``saved_params`` and ``importances``.

    Difference from Avalanche's plugin: the experience index is the plugin's own count of
    trained experiences (``exp_counter``, part of the state), not
    ``strategy.clock.train_exp_counter``. A strategy rebuilt to resume a run starts with a
    fresh clock at 0, which would make Avalanche's plugin drop the penalty and overwrite
    the importances of experience 0. Attach the plugin from the first experience on.

    Args:
        ewc_lambda: weight of the penalty in the total loss.
        mode: ``"separate"`` (one penalty per previous experience) or ``"online"``
            (a single penalty, importances summed with ``decay_factor``).
        decay_factor: decay of the importances; ``mode="online"`` only.
        keep_importance_data: keep the values and importances of every experience
            (always ``True`` in ``"separate"`` mode).
    """

    def __init__(self, ewc_lambda, mode="separate", decay_factor=None, keep_importance_data=False):
        super().__init__(
            ewc_lambda,
            mode=mode,
            decay_factor=decay_factor,
            keep_importance_data=keep_importance_data,
        )
        self.exp_counter = 0  # experiences trained so far

    # ------------------------------------------------------------------ callbacks
    def before_training_exp(self, strategy, *args, **kwargs):
        self._place(strategy.device)

    def before_backward(self, strategy, *args, **kwargs):
        """Add ``ewc_lambda * sum_i F_i (theta - theta*_i)^2`` to ``strategy.loss``."""
        if self.exp_counter == 0:
            return
        self._place(strategy.device)
        if self.mode == "separate":
            experiences = range(self.exp_counter)
        else:
            experiences = [self.exp_counter - 1]
        penalty = torch.tensor(0).float().to(strategy.device)
        for e in experiences:
            saved, importances = self.saved_params[e], self.importances[e]
            for k, cur_param in strategy.model.named_parameters():
                if k not in saved:  # new parameters do not count
                    continue
                shape = cur_param.shape
                penalty += (
                    importances[k].expand(shape) * (cur_param - saved[k].expand(shape)).pow(2)
                ).sum()
        strategy.loss += self.ewc_lambda * penalty

    def after_training_exp(self, strategy, *args, **kwargs):
        """Compute the importances of the experience and store the current parameters."""
        t = self.exp_counter
        importances = self.compute_importances(
            strategy.model,
            strategy._criterion,
            strategy.optimizer,
            strategy.experience.dataset,
            strategy.device,
            strategy.train_mb_size,
            num_workers=kwargs.get("num_workers", 0),
        )
        self.update_importances(importances, t)
        self.saved_params[t] = copy_params_dict(strategy.model)
        if t > 0 and not self.keep_importance_data:
            self.saved_params.pop(t - 1, None)
        self.exp_counter = t + 1

    # ---------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """``exp_counter`` and, per experience id, the saved parameters and importances.

        Each ``ParamData`` is stored as its key, its name and a CPU tensor copy.
        """
        return {
            "version": _STATE_VERSION,
            "exp_counter": self.exp_counter,
            "saved_params": _params_to_state(self.saved_params),
            "importances": _params_to_state(self.importances),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; tensors move to the strategy's device at the next callback."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported StatefulEWCPlugin state version {state.get('version')!r}")
        self.exp_counter = int(state["exp_counter"])
        self.saved_params = _params_from_state(state["saved_params"])
        self.importances = _params_from_state(state["importances"])

    def _place(self, device) -> None:
        """Move every stored tensor to ``device`` (no-op when already there)."""
        device = torch.device(device)
        for store in (self.saved_params, self.importances):
            for params in store.values():
                for pd in params.values():
                    if pd.data.device != device:
                        pd._data = pd.data.to(device)
                        pd.device = device


def _params_to_state(store: dict[int, dict[str, ParamData]]) -> dict[int, dict[str, Any]]:
    return {
        int(exp): {
            "keys": list(params.keys()),
            "names": [pd.name for pd in params.values()],
            "tensors": [pd.data.detach().cpu().clone() for pd in params.values()],
        }
        for exp, params in store.items()
    }


def _params_from_state(state: dict[int, dict[str, Any]]) -> defaultdict:
    store: defaultdict = defaultdict(dict)
    for exp, entry in state.items():
        store[int(exp)] = {
            key: ParamData(name, init_tensor=t.clone(), device=t.device)
            for key, name, t in zip(entry["keys"], entry["names"], entry["tensors"])
        }
    return store
