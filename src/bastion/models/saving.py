"""``save_model``: a torch model's weights as a ``.safetensors`` file that :func:`~bastion.models.load_model`
reads back (the architecture's name in the file's metadata)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from torch import nn

from ..errors import UsageError
from .architectures import build_architecture
from .torch import TorchClassifier

__all__ = ["save_model"]


def save_model(
    classifier_or_module: TorchClassifier | nn.Module,
    path: str | os.PathLike[str],
    *,
    arch: str,
    metadata: Mapping[str, object] | None = None,
) -> Path:
    """Write the weights to a ``.safetensors`` file whose metadata names ``arch``; returns the path.

    The file loads back with ``load_model(path)``. Non-string metadata values are stored as JSON.
    """
    from safetensors.torch import save_file

    module = classifier_or_module.module if isinstance(classifier_or_module, TorchClassifier) else classifier_or_module
    if not isinstance(module, nn.Module):
        raise UsageError(f"save_model needs a torch model, got {type(classifier_or_module).__name__}")
    out = Path(path)
    if out.suffix.lower() != ".safetensors":
        raise UsageError(f"save_model writes safetensors: name the file '*.safetensors', got {out.name!r}")
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    check, _ = build_architecture(arch)
    try:
        check.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UsageError(
            f"the model's weights do not fit architecture {arch!r}: {' '.join(str(exc).split())[:300]}"
        ) from None
    meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    meta["bastion_arch"] = arch
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, out)
    return out
