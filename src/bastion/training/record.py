"""The training record, checkpoints and the trained-model file.

- The **record** is a JSON-ready dict: ``config`` (the run's settings), ``epochs`` (one entry per epoch:
  ``epoch``, ``lr``, ``loss``, the monitor's values such as ``val_accuracy``, ``seconds``, and what the step
  and callbacks add) and ``seconds`` (the sum over epochs). Defences add their own keys (adversarial training:
  ``overfit_events``, ``final``).
- A **checkpoint** is one file holding the model, optimizer, scheduler and generator states, the epoch, the
  record, the settings and the step's and callbacks' states: tensors and plain values only, written atomically
  with ``torch.save`` and read back with ``torch.load(weights_only=True)`` (no code runs on load).
- :func:`save_trained` writes a trained model as safetensors with its record in the metadata, and the record
  beside it as JSON: the file ``bastion harden`` writes, loadable with ``bastion.load_model``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UsageError

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "new_record", "save_checkpoint", "save_trained"]

CHECKPOINT_FORMAT = "bastion-trainer/1"


def new_record(settings: dict[str, Any]) -> dict[str, Any]:
    """An empty record for a run with ``settings``."""
    return {"config": settings, "epochs": [], "seconds": 0.0}


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file in the same folder, then a rename)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint at ``path``, refused (:class:`UsageError`) when it cannot be read, comes from another
    version, or was written with other ``settings``."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - a damaged checkpoint is a usage problem
        raise UsageError(f"cannot read checkpoint {path}: {exc}; delete it to start over") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"checkpoint {path} was not written by this version of bastion's trainer; delete it")
    if json.loads(state["settings"]) != json.loads(json.dumps(settings)):
        raise UsageError(f"checkpoint {path} was written with other settings; delete it or use another path")
    return state


def save_trained(
    model: Any,
    path: str | os.PathLike[str],
    record: dict[str, Any],
    *,
    arch: str | None = None,
    record_path: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``model`` (a TorchClassifier or an ``nn.Module``) to the ``.safetensors`` file ``path`` with
    ``record`` in its metadata (``bastion_record``; ``bastion_defense`` too when the record's config names a
    defence), and ``record`` as JSON to ``record_path`` (default: ``path`` with ``.json``); return the record's
    path. ``arch``: the registered architecture the weights fit (default: the classifier's ``arch``)."""
    from ..models.loading import save_model
    from ..models.torch import TorchClassifier

    if isinstance(model, TorchClassifier):
        module, arch = model.module, arch or model.arch
    elif isinstance(model, nn.Module):
        module = model
    else:
        raise UsageError(f"save_trained writes torch models (TorchClassifier or nn.Module), got {type(model).__name__}")
    if arch is None:
        raise UsageError(
            "the model's architecture is not known: pass arch= (the registered architecture its weights fit)"
        )
    config = record.get("config")
    meta: dict[str, object] = {"bastion_record": record}
    if isinstance(config, dict) and "defense" in config:
        meta = {"bastion_defense": config, **meta}
    rec_path = Path(record_path) if record_path is not None else Path(path).with_suffix(".json")
    save_model(module, path, arch=arch, metadata=meta)
    rec_path.parent.mkdir(parents=True, exist_ok=True)
    rec_path.write_text(json.dumps(record, indent=1), encoding="utf-8")
    return rec_path
