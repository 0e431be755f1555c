"""Assembling the service from command-line style arguments (used by ``bastion serve``, tests and benchmarks), and
the listening socket, bound before the guard is calibrated so that a busy or invalid port is refused at once."""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UsageError, require

__all__ = ["bind", "build_app", "default_reference", "encrypted_program"]


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` the way uvicorn binds it (``SO_REUSEADDR``; IPv6 for a host with a
    colon), for :meth:`uvicorn.Server.run`'s ``sockets=``: the port is checked, and held, before any slow work.

    Raises:
        UsageError: ``port`` is not in [1, 65535], or the address cannot be bound (in use, not this machine's).
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise UsageError(f"port must be a whole number in [1, 65535], got {port!r}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = exc.strerror or str(exc)
        hint = " (another server is listening there: pick another port)" if exc.errno == errno.EADDRINUSE else ""
        raise UsageError(f"cannot listen on {host}:{port}: {why}{hint}") from None
    return sock


def default_reference(model: str | Any) -> str:
    """The reference data of a zoo model (``zoo:NAME``): its dataset's name; a UsageError for any other model."""
    from ..models.zoo import ZOO

    name = model[4:] if isinstance(model, str) and model.startswith("zoo:") else None
    if name is None or name not in ZOO:
        raise UsageError("reference= is needed: the clean data the guard's thresholds are calibrated on")
    return ZOO[name].dataset


def encrypted_program(clf: Any, arch: str | None = None) -> Any:
    """The served model compiled for CKKS (:func:`~bastion.defenses.encrypted.compile_model`), for
    ``bastion serve --encrypted``: checked before the guard is calibrated, so a model that cannot run encrypted is
    refused at once.

    Raises:
        UsageError: the model is not a torch network, or has a layer CKKS cannot evaluate (named).
        MissingExtraError: TenSEAL (the ``he`` extra) is not installed.
    """
    from ..defenses.encrypted import compile_model
    from ..models.torch import TorchClassifier

    require("tenseal", "he")  # the evaluator needs it: say so before the calibration, not after

    if not isinstance(clf, TorchClassifier):
        raise UsageError(
            f"--encrypted needs a torch model (affine layers and polynomial activations) to compile for CKKS; "
            f"{type(clf).__name__} has no torch module"
        )
    return compile_model(clf.module, tuple(clf.input_shape), arch=arch or clf.arch)


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
    clock: Callable[[], float] = time.monotonic,
    encrypted: Any = False,
) -> tuple[Any, dict[str, Any]]:
    """``(app, info)``: load the model (a spec for :func:`~bastion.models.loading.load_model`, or a Classifier)
    and the reference data (default: a zoo model's dataset), calibrate the guard, open the store. ``info`` holds
    the reference's name, the calibration, the guard's signals (:meth:`~bastion.serve.guard.Guard.signals`), the
    spool path and the database URL (password hidden); ``clock`` times the key cache and the rate limits.
    ``encrypted``: True (compile the model, :func:`encrypted_program`) or an already compiled
    :class:`~bastion.defenses.encrypted.HEProgram` adds the encrypted endpoints, evaluated in a child process
    (:class:`~bastion.defenses.encrypted.isolation.IsolatedHEServer`); ``info["encrypted"]`` then describes them."""
    from ..data import load_dataset
    from ..models.loading import load_model
    from .app import create_app
    from .config import GuardConfig, load_config
    from .guard import Guard
    from .store import Store

    clf = load_model(model, arch=arch) if isinstance(model, str) else model
    program = encrypted_program(clf, arch) if encrypted is True else (encrypted or None)
    reference = default_reference(model) if reference is None else reference
    ref = load_dataset(reference) if isinstance(reference, (str, Path)) else reference
    cfg = config if isinstance(config, GuardConfig) else load_config(config)
    guard = Guard(clf, ref, cfg, seed=seed)
    store = store or Store(db)
    spool = spool or _default_spool(store.url)
    he = _isolated_server(program, clf, arch) if program is not None else None
    try:
        app = create_app(guard, store, spool=spool, clock=clock, he=he)
    except BaseException:
        if he is not None:
            he.close()
        raise
    return app, {
        "reference": getattr(ref, "name", str(reference)),
        "calibration": guard.calibration,
        "signals": guard.signals(),
        "ood_signal": guard.detector is not None,
        "detector": cfg.ood.detector if guard.detector is not None else None,
        "spool": spool,
        "db": store._safe_url(),
        "encrypted": _describe_encrypted(he),
    }


def _isolated_server(program: Any, clf: Any, arch: str | None) -> Any:
    from ..defenses.encrypted.isolation import IsolatedHEServer
    from ..models.torch import TorchClassifier

    name = arch or (clf.arch if isinstance(clf, TorchClassifier) else None) or type(clf).__name__
    return IsolatedHEServer(program, model=name)


def _describe_encrypted(he: Any) -> dict[str, Any] | None:
    """What the start-up record says of the encrypted endpoints: the CKKS parameters and the model's depth."""
    if he is None:
        return None
    spec = he.spec()
    return {k: spec[k] for k in ("params", "security_bits", "depth", "slots", "input_dim", "n_outputs")}


def _default_spool(url: str) -> str:
    """Next to a SQLite file, else in $BASTION_HOME."""
    from ..models.zoo import bastion_home

    on_disk = url.startswith("sqlite:///") and ":memory:" not in url
    base = Path(url.split("///", 1)[1]).parent if on_disk else bastion_home()
    return str(base / "audit-spool.jsonl")
