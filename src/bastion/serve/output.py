"""The guard's ``[output]`` policy, built from ``guard.toml``: what the answers reveal beyond the label, against
model extraction (:mod:`bastion.defenses.extraction`: rounding, top-k, label-only, reverse sigmoid, MAD prediction
poisoning). After inference the probabilities go through the policy before they are answered; the label is the
model's (every policy keeps it on top), and each audit record names the policy by the description built here.
"""

from __future__ import annotations

from typing import Any

from ..errors import UsageError
from .config import OUTPUT_KEYS, OutputConfig

__all__ = ["output_policy"]


def output_policy(cfg: OutputConfig, model: Any, seed: int) -> tuple[Any, str]:
    """The ``[output]`` policy for the served ``model`` and its description for the audit log, e.g.
    ``round(decimals=2)``."""
    from ..defenses.extraction import get_output_policy

    keys = OUTPUT_KEYS[cfg.policy]
    described = {k: getattr(cfg, k) for k in keys}
    params = {"layers" if k == "surrogate_layers" else k: v for k, v in described.items()}
    if cfg.policy == "prediction-poisoning":
        params["surrogate"] = _surrogate(cfg.surrogate, model, seed)
        described["surrogate"] = cfg.surrogate or "served architecture, initialised afresh"
    text = cfg.policy + ("(" + ", ".join(f"{k}={v!r}" for k, v in described.items()) + ")" if keys else "")
    return get_output_policy(cfg.policy, **params), text


def _surrogate(spec: str, served: Any, seed: int) -> Any:
    """MAD's surrogate: the model ``spec`` names, or a freshly initialised copy of the served model's network;
    a torch model either way."""
    from ..defenses.extraction import initialised_like
    from ..models.loading import load_model
    from ..models.torch import TorchClassifier

    model = load_model(spec) if spec else served
    if not isinstance(model, TorchClassifier):
        what = f"{spec!r} is" if spec else "the served model is"
        raise UsageError(
            f"[output] surrogate: prediction-poisoning differentiates a torch surrogate, and {what} "
            f'{type(model).__name__}: name a torch model (e.g. surrogate = "zoo:mnist-cnn")'
        )
    if model.n_classes != served.n_classes:
        raise UsageError(f"[output] surrogate has {model.n_classes} classes, the served model {served.n_classes}")
    return model if spec else initialised_like(model, seed)
