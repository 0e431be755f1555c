"""``bastion keys`` and ``bastion serve``: the guard service's commands (registered by :mod:`bastion.cli`)."""

from __future__ import annotations

import json

import typer

from ..cli_common import log as _log
from ..cli_common import refuse as _fail


keys_app = typer.Typer(help="Manage the guard service's API keys (stored as salted hashes).", no_args_is_help=True)

_DB_HELP = "Database URL: sqlite:///path.db (default $BASTION_HOME/serve.db) or postgresql+psycopg://user@host/db."


@keys_app.command("create")
def keys_create(
    role: str = typer.Option("client", "--role", help="client (predict) or admin (also metrics, dashboard, admin API)."),
    label: str = typer.Option("", "--label", help="A note stored with the key (who it is for)."),
    db: str | None = typer.Option(None, "--db", help=_DB_HELP),
) -> None:
    """Create an API key and print it once on stdout (only its salted hash is stored)."""
    from .keys import create_key
    from .store import Store

    key, info = create_key(Store(db), role, label)
    typer.echo(key)
    _log(f"created {info.role} key {info.id}; it is shown only now: send it as 'Authorization: Bearer <key>'")


@keys_app.command("list")
def keys_list(db: str | None = typer.Option(None, "--db", help=_DB_HELP),
              as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """List key ids, roles, labels and whether they are revoked (never the keys)."""
    import datetime as dt

    from .store import Store

    rows = [{k: r[k] for k in ("id", "role", "label", "created_at", "revoked_at")} for r in Store(db).list_keys()]
    if as_json:
        typer.echo(json.dumps({"keys": rows}))
        return
    for r in rows:
        created = dt.datetime.fromtimestamp(r["created_at"], tz=dt.UTC).strftime("%Y-%m-%d %H:%M")
        typer.echo(f"{r['id']}  {r['role']:6s}  {'revoked' if r['revoked_at'] else 'active '}  {created}  {r['label']}")


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key id (bastion keys list), or the whole key."),
                db: str | None = typer.Option(None, "--db", help=_DB_HELP)) -> None:
    """Revoke a key (a running service refuses it within 2 seconds)."""
    from .keys import parse_key
    from .store import Store

    parsed = parse_key(key_id)
    kid = parsed[0] if parsed else key_id
    if not Store(db).revoke_key(kid):
        _fail(f"no active key with id {kid!r} (bastion keys list shows them)")
    typer.echo(f"revoked {kid}")


def serve(
    model: str = typer.Option(..., "--model", "-m", help="zoo:NAME, a model file, module:function (the served model)."),
    reference: str | None = typer.Option(None, "--reference", "-r", help="Clean reference data the signals are "
                                         "calibrated on (its training split): a built-in name or a file. "
                                         "Default: the model's zoo dataset."),
    config: str | None = typer.Option(None, "--config", "-c", help="Guard settings, TOML (see docs: [confidence], "
                                      "[ood], [drift], [extraction], [limits])."),
    db: str | None = typer.Option(None, "--db", help=_DB_HELP),
    spool: str | None = typer.Option(None, "--spool", help="Local append-only file for audit records while the "
                                     "database is down (default: next to the SQLite file or in $BASTION_HOME)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (loopback by default)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    arch: str | None = typer.Option(None, "--arch", help="Architecture name for a weights-only model file."),
    seed: int = typer.Option(0, "--seed", help="Seed of the calibration split and the monitors."),
) -> None:
    """Serve a model behind the guard: abstention, OOD and extraction signals, drift alerts, audit log.

    Needs an API key (bastion keys create --role client|admin --db SAME_URL). Endpoints: POST /v1/predict,
    GET /health, /metrics (admin), /dashboard (admin), /v1/admin/* (admin), /docs and /openapi.json.
    """
    from .server import build_app

    try:
        import uvicorn
    except ImportError:
        _fail("bastion serve needs the service extra: pip install 'bastion[service]'")
    application, info = build_app(model=model, reference=reference, config=config, db=db, spool=spool,
                                  arch=arch, seed=seed)
    _log(f"guard calibrated on {info['reference']}: {json.dumps(info['calibration'])}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        _log(f"warning: binding {host}: the service is reachable from other machines (keys are still required)")
    uvicorn.run(application, host=host, port=port, log_level="warning", access_log=False)
