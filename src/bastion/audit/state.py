"""The audit's saved state: fingerprints of what was audited, and the output directory it resumes from.

After each probe the runner saves its result under ``OUT/.audit-state/`` next to the audit's settings
and the model and data fingerprints (``settings.json``). :func:`open_state` checks the output
directory and returns the probes already finished there — only when the settings and fingerprints
are the same; other settings are refused, naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from ..models.base import Classifier
from ..models.torch import TorchClassifier
from ..models.wrapped import unwrap
from .result import ProbeResult
from .store import write_atomic

__all__ = [
    "OUTPUTS",
    "STATE_DIR",
    "check_out_dir",
    "clear_state",
    "fingerprint_data",
    "fingerprint_model",
    "open_state",
    "sha",
]

STATE_DIR = ".audit-state"
OUTPUTS = ("junit.xml", "index.html", "report.json")


def sha(*parts: bytes | str) -> str:
    """sha256 over ``parts`` (text UTF-8 encoded), each followed by a NUL byte."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()


def fingerprint_model(model: Classifier, probe_x: torch.Tensor) -> str:
    """sha256 of a torch model's parameters and buffers (under any wrappers: smoothing, detection, EOT, whose
    configuration enters through their repr), or of any other model's scores on ``probe_x`` (those queries
    count: the audit never winds a model's query counter back)."""
    inner = unwrap(model)
    if isinstance(inner, TorchClassifier):
        parts: list[bytes | str] = [type(model).__name__, repr(model), type(inner.module).__name__]
        for k, v in inner.module.state_dict().items():
            parts += [k, v.detach().cpu().contiguous().numpy().tobytes()]
        return sha(*parts)
    with torch.no_grad():
        s = model.logits(probe_x).double().cpu()
    return sha(type(model).__name__, (s * 1e5).round().numpy().tobytes())


def fingerprint_data(x: torch.Tensor, y: torch.Tensor, x_train: torch.Tensor) -> str:
    return sha(
        x.contiguous().numpy().tobytes(),
        y.contiguous().numpy().tobytes(),
        str(tuple(x_train.shape)),
        x_train.contiguous().numpy().tobytes(),
    )


def check_out_dir(out: Path) -> None:
    """``out`` can be the audit's directory: a writable directory, or a new one in an existing writable folder
    (only the last level is created: a mistyped path is refused, not built). :class:`UsageError` otherwise."""
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"out={out} exists and is not a directory")
        where = out
    else:
        where = out.parent
        if not where.exists():
            raise UsageError(f"out={out}: the folder {where} does not exist: create it first or choose another")
        if not where.is_dir():
            raise UsageError(f"out={out}: {where} is not a folder")
    if not os.access(where, os.W_OK | os.X_OK):
        raise UsageError(f"out={out}: cannot write in {where} (permission denied)")


def _finished(state: Path) -> dict[str, ProbeResult]:
    done: dict[str, ProbeResult] = {}
    for f in sorted(state.glob("probe-*.json")):
        try:
            r = ProbeResult.from_dict(json.loads(f.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError, TypeError, KeyError):
            continue  # a damaged probe file: that probe runs again
        done[r.probe] = r
    return done


def open_state(out: Path, settings_id: str, settings: dict[str, Any]) -> tuple[Path, dict[str, ProbeResult]]:
    """Check the output directory; return the state directory and the probes already finished there."""
    check_out_dir(out)
    state = out / STATE_DIR
    done: dict[str, ProbeResult] = {}
    if out.is_dir() and any(out.iterdir()):
        meta = state / "settings.json"
        if not meta.is_file():
            raise UsageError(f"out={out} is not empty and holds no bastion audit: choose a new or empty directory")
        try:
            old = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            raise UsageError(f"out={out} holds a damaged audit state ({meta}): remove the directory") from None
        if old.get("id") != settings_id:
            prev = old.get("settings", {})
            diff = sorted(k for k in set(prev) | set(settings) if prev.get(k) != settings.get(k))
            raise UsageError(
                f"out={out} holds an audit with other settings (differs in: {', '.join(diff) or 'fingerprints'}); "
                "resume it with the same settings, or choose another output directory"
            )
        done = _finished(state)
    state.mkdir(parents=True, exist_ok=True)  # out itself at most: its parent exists
    for name in OUTPUTS:  # an earlier run's outputs go now and come back when this run finishes
        (out / name).unlink(missing_ok=True)
    write_atomic(state / "settings.json", json.dumps({"id": settings_id, "settings": settings}, indent=1))
    return state, done


def clear_state(out: str | os.PathLike[str]) -> None:
    """Remove an audit's saved state (the report files stay)."""
    shutil.rmtree(Path(out) / STATE_DIR, ignore_errors=True)
