"""``bastion keys``: the guard service's API keys."""

from __future__ import annotations

import json

import typer

from .common import log as _log
from .common import refuse as _fail

keys_app = typer.Typer(help="Manage the guard service's API keys (stored as salted hashes).", no_args_is_help=True)

DB_HELP = "Database URL: sqlite:///path.db (default $BASTION_HOME/serve.db) or postgresql+psycopg://user@host/db."
_DB_EXISTING_HELP = DB_HELP + " It must exist already (bastion keys create makes it)."
_JSON_HELP = "Print one JSON object on stdout."


@keys_app.command("create")
def keys_create(
    role: str = typer.Option(
        "client", "--role", help="client (predict) or admin (also metrics, dashboard, admin API)."
    ),
    label: str = typer.Option("", "--label", help="A note stored with the key (who it is for)."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP + " Created if it does not exist."),
    as_json: bool = typer.Option(
        False, "--json", help='Print {"key", "id", "role", "label"} as one JSON object instead of the key alone.'
    ),
) -> None:
    """Create an API key and print it once on stdout (only its salted hash is stored)."""
    from ..serve.keys import create_key
    from ..serve.store import Store

    key, info = create_key(Store(db), role, label)
    if as_json:
        typer.echo(json.dumps({"key": key, "id": info.id, "role": info.role, "label": info.label}))
    else:
        typer.echo(key)
    _log(f"created {info.role} key {info.id}; it is shown only now: send it as 'Authorization: Bearer <key>'")


@keys_app.command("list")
def keys_list(
    db: str | None = typer.Option(None, "--db", help=_DB_EXISTING_HELP),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """List key ids, roles, labels and whether they are revoked (never the keys)."""
    import datetime as dt

    from ..serve.store import Store

    store = Store(db, create=False)
    rows = [{k: r[k] for k in ("id", "role", "label", "created_at", "revoked_at")} for r in store.list_keys()]
    if as_json:
        typer.echo(json.dumps({"keys": rows}))
        return
    for r in rows:
        created = dt.datetime.fromtimestamp(r["created_at"], tz=dt.UTC).strftime("%Y-%m-%d %H:%M")
        typer.echo(f"{r['id']}  {r['role']:6s}  {'revoked' if r['revoked_at'] else 'active '}  {created}  {r['label']}")


@keys_app.command("revoke")
def keys_revoke(
    key_id: str = typer.Argument(..., help="The key id (bastion keys list), or the whole key."),
    db: str | None = typer.Option(None, "--db", help=_DB_EXISTING_HELP),
    as_json: bool = typer.Option(False, "--json", help='Print {"revoked": id} as one JSON object.'),
) -> None:
    """Revoke a key (a running service refuses it within 2 seconds)."""
    from ..serve.keys import parse_key
    from ..serve.store import Store

    parsed = parse_key(key_id)
    kid = parsed[0] if parsed else key_id
    if not Store(db, create=False).revoke_key(kid):
        _fail(f"no active key with id {kid!r} (bastion keys list shows them)")
    typer.echo(json.dumps({"revoked": kid}) if as_json else f"revoked {kid}")
