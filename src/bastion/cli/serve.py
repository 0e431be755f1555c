"""``bastion serve``: the guard service in front of a model."""

from __future__ import annotations

import json

import typer

from .common import log as _log
from .common import refuse as _fail
from .keys import DB_HELP as _DB_HELP


def serve(
    model: str = typer.Option(..., "--model", "-m", help="zoo:NAME, a model file, module:function (the served model)."),
    reference: str | None = typer.Option(
        None,
        "--reference",
        "-r",
        help="Clean reference data the signals are "
        "calibrated on (its training split): a built-in name or a file. "
        "Default: the model's zoo dataset.",
    ),
    config: str | None = typer.Option(
        None,
        "--config",
        "-c",
        help="Guard settings, TOML (see docs: [confidence], [ood], [drift], [extraction], [limits]).",
    ),
    db: str | None = typer.Option(None, "--db", help=_DB_HELP),
    spool: str | None = typer.Option(
        None,
        "--spool",
        help="Local append-only file for audit records while the "
        "database is down (default: next to the SQLite file or in $BASTION_HOME).",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (loopback by default)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    arch: str | None = typer.Option(None, "--arch", help="Architecture name for a weights-only model file."),
    seed: int = typer.Option(0, "--seed", help="Seed of the calibration split and the monitors."),
) -> None:
    """Serve a model behind the guard: abstention, OOD and extraction signals, drift alerts, audit log.

    Needs an API key (bastion keys create --role client|admin --db SAME_URL). Endpoints: POST /v1/predict,
    GET /health, /metrics (admin), /dashboard (admin), /v1/admin/* (admin), /docs and /openapi.json.
    """
    from ..serve.server import build_app

    try:
        import uvicorn
    except ImportError:
        _fail("bastion serve needs the service extra: pip install 'bastion[service]'")
    application, info = build_app(
        model=model, reference=reference, config=config, db=db, spool=spool, arch=arch, seed=seed
    )
    _log(f"guard calibrated on {info['reference']}: {json.dumps(info['calibration'])}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        _log(f"warning: binding {host}: the service is reachable from other machines (keys are still required)")
    uvicorn.run(application, host=host, port=port, log_level="warning", access_log=False)
