"""Assembling the service from command-line style arguments (used by ``bastion serve``, tests and benchmarks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UsageError

__all__ = ["build_app"]


def build_app(
    *,
    model: str | Any,
    reference: str | Any | None = None,
    config: str | Any | None = None,
    db: str | None = None,
    spool: str | None = None,
    arch: str | None = None,
    seed: int = 0,
    store: Any = None,
) -> tuple[Any, dict[str, Any]]:
    """``(app, info)``: load the model and reference data, calibrate the guard, open the store."""
    from ..data import load_dataset
    from ..models.loading import load_model
    from ..models.zoo import ZOO, bastion_home
    from .app import create_app
    from .config import GuardConfig, load_config
    from .guard import Guard
    from .store import Store

    clf = load_model(model, arch=arch) if isinstance(model, str) else model
    if reference is None:
        name = model[4:] if isinstance(model, str) and model.startswith("zoo:") else None
        if name is None or name not in ZOO:
            raise UsageError("--reference is needed: the clean data the guard's thresholds are calibrated on")
        reference = ZOO[name].dataset
    ref = load_dataset(reference) if isinstance(reference, (str, Path)) else reference
    cfg = config if isinstance(config, GuardConfig) else load_config(config)
    guard = Guard(clf, ref, cfg, seed=seed)
    store = store or Store(db)
    if spool is None:
        url = store.url
        base = (
            Path(url.split("///", 1)[1]).parent
            if url.startswith("sqlite:///") and ":memory:" not in url
            else bastion_home()
        )
        spool = str(base / "audit-spool.jsonl")
    app = create_app(guard, store, spool=spool)
    return app, {
        "reference": getattr(ref, "name", str(reference)),
        "calibration": guard.calibration,
        "spool": spool,
        "db": store._safe_url(),
    }
