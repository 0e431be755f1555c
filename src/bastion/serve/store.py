"""The service's database, through SQLAlchemy Core: API keys, the audit log and events, with migrations.

SQLite by default (a file), PostgreSQL by URL (``postgresql+psycopg://user@host/db``). The schema is
versioned: :data:`MIGRATIONS` lists the steps in order and :func:`migrate` applies those a database has
not seen yet, each in its own transaction, recording the version in ``bastion_schema``.

Tables:

- ``api_keys``: key id, salt, SHA-256 of salt + secret (never the key), role, label, created/revoked.
- ``audit_records``: one row per answered request — request id (unique: a record replayed from the spool
  is inserted at most once), time, key id, input fingerprint (SHA-256 of the float32 bytes), number of
  inputs, labels, abstentions, actions, reasons and scores (JSON), latency, the client's status and the output
  policy the answers went through (``[output]``: which, with its parameters; never the raw probabilities).
- ``events``: drift alarms, clients flagged as extracting, store outages (time, kind, JSON detail).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..errors import UsageError

__all__ = ["MIGRATIONS", "Store", "default_url"]


def default_url() -> str:
    """``sqlite:///$BASTION_HOME/serve.db`` (``~/.cache/bastion`` when BASTION_HOME is unset)."""
    from ..models.zoo import bastion_home

    return f"sqlite:///{bastion_home() / 'serve.db'}"


def _v1(conn: Any, meta: Any) -> None:
    import sqlalchemy as sa

    sa.Table(
        "api_keys",
        meta,
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("salt", sa.String(64), nullable=False),
        sa.Column("digest", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("label", sa.String(200), nullable=False, server_default=""),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
    )
    sa.Table(
        "audit_records",
        meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False, unique=True),
        sa.Column("ts", sa.Float, nullable=False, index=True),
        sa.Column("key_id", sa.String(32), nullable=False, index=True),
        sa.Column("input_sha256", sa.String(64), nullable=False),
        sa.Column("n_inputs", sa.Integer, nullable=False),
        sa.Column("labels", sa.Text, nullable=False),
        sa.Column("abstain", sa.Text, nullable=False),
        sa.Column("actions", sa.Text, nullable=False),
        sa.Column("reasons", sa.Text, nullable=False),
        sa.Column("scores", sa.Text, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
    )
    sa.Table(
        "events",
        meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ts", sa.Float, nullable=False, index=True),
        sa.Column("kind", sa.String(64), nullable=False, index=True),
        sa.Column("detail", sa.Text, nullable=False),
    )
    meta.create_all(conn, tables=[meta.tables[n] for n in ("api_keys", "audit_records", "events")])


def _v2(conn: Any, meta: Any) -> None:
    """Version 2: the client's status at answer time (allowed / throttled / blocked) on each record."""
    import sqlalchemy as sa

    conn.execute(sa.text("ALTER TABLE audit_records ADD COLUMN client_status VARCHAR(16) NOT NULL DEFAULT 'ok'"))


def _v3(conn: Any, meta: Any) -> None:
    """Version 3: the output policy the answers went through (``[output]``), e.g. ``round(decimals=2)``."""
    import sqlalchemy as sa

    conn.execute(sa.text("ALTER TABLE audit_records ADD COLUMN output_policy VARCHAR(200) NOT NULL DEFAULT 'none'"))


MIGRATIONS: list[tuple[int, str, Callable[[Any, Any], None]]] = [
    (1, "api keys, audit records, events", _v1),
    (2, "audit_records.client_status", _v2),
    (3, "audit_records.output_policy", _v3),
]

AUDIT_COLUMNS = (
    "request_id",
    "ts",
    "key_id",
    "input_sha256",
    "n_inputs",
    "labels",
    "abstain",
    "actions",
    "reasons",
    "scores",
    "latency_ms",
    "client_status",
    "output_policy",
)
# what a record spooled by an older version lacks
_AUDIT_DEFAULTS = {"output_policy": "none"}


def _sqlite_file(url: str, create: bool) -> None:
    """Make the folder of a SQLite file (``create``), or refuse a file that does not exist (not ``create``)."""
    from pathlib import Path

    path = url.split("///", 1)[-1]
    if not path or path == ":memory:" or "///" not in url:
        return
    if create:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    elif not Path(path).is_file():
        raise UsageError(
            f"no database at {path}: check the URL (sqlite:///relative.db, sqlite:////absolute.db); a new database "
            "is made only when a key is created (bastion keys create)"
        )


class Store:
    """A SQLAlchemy engine on ``url`` with the schema migrated to the latest version.

    ``create=False`` refuses a SQLite file that does not exist yet (for commands that only read or revoke: a
    mistyped path must not become a new, empty database); by default the file and its folder are created.

    Raises:
        UsageError: the URL is malformed, names a driver that is not installed, the database cannot be
            reached at start-up, or (``create=False``) the SQLite file does not exist (the message says which).
    """

    def __init__(self, url: str | None = None, *, connect_timeout: float = 5.0, create: bool = True) -> None:
        try:
            import sqlalchemy as sa
        except ImportError:  # pragma: no cover - the service extra is missing
            raise UsageError("the service needs SQLAlchemy: pip install 'bastion[service]'") from None
        self.url = url or default_url()
        kwargs: dict[str, Any] = {"future": True}
        if self.url.startswith("sqlite"):
            _sqlite_file(self.url, create)
            kwargs["connect_args"] = {"timeout": 30}
        elif self.url.startswith("postgresql"):
            kwargs["connect_args"] = {"connect_timeout": int(max(1, connect_timeout))}
            kwargs["pool_pre_ping"] = True
        try:
            self.engine = sa.create_engine(self.url, **kwargs)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
            raise UsageError(
                f"--db {self.url!r}: {exc} (SQLite: sqlite:///path.db; PostgreSQL: postgresql+psycopg:"
                f"//user:password@host/db, with pip install 'psycopg[binary]')"
            ) from None
        if self.url.startswith("sqlite"):

            @sa.event.listens_for(self.engine, "connect")
            def _wal(dbapi_conn: Any, _record: Any) -> None:  # concurrent readers while the log writes
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()

        try:
            self.version = self.migrate()
        except sa.exc.OperationalError as exc:
            first = str(exc.orig).strip().splitlines()[0]
            raise UsageError(f"cannot reach the database {self._safe_url()}: {first}") from None
        self.meta = sa.MetaData()
        self.meta.reflect(self.engine, only=["api_keys", "audit_records", "events"])
        self.keys = self.meta.tables["api_keys"]
        self.audit = self.meta.tables["audit_records"]
        self.events = self.meta.tables["events"]

    def _safe_url(self) -> str:
        import sqlalchemy as sa

        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    # -- schema ----------------------------------------------------------------------------------
    def migrate(self) -> int:
        """Apply the migrations this database lacks; return the schema version."""
        import sqlalchemy as sa

        meta = sa.MetaData()
        version_table = sa.Table(
            "bastion_schema",
            meta,
            sa.Column("version", sa.Integer, nullable=False),
            sa.Column("applied_at", sa.Float, nullable=False),
            sa.Column("description", sa.String(200), nullable=False),
        )
        with self.engine.begin() as conn:
            meta.create_all(conn, tables=[version_table])
            current = conn.execute(sa.select(sa.func.max(version_table.c.version))).scalar() or 0
        for version, description, step in MIGRATIONS:
            if version <= current:
                continue
            with self.engine.begin() as conn:
                step(conn, sa.MetaData())
                conn.execute(
                    version_table.insert().values(version=version, applied_at=time.time(), description=description)
                )
            current = version
        return current

    # -- audit records ---------------------------------------------------------------------------
    def insert_audit(self, records: Sequence[dict[str, Any]]) -> int:
        """Insert records in one transaction, skipping request ids already stored; return how many are new."""
        if not records:
            return 0
        rows = [{c: r[c] if c in r else _AUDIT_DEFAULTS[c] for c in AUDIT_COLUMNS} for r in records]
        dialect = self.engine.dialect.name
        stmt: Any
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt = pg_insert(self.audit).on_conflict_do_nothing(index_elements=["request_id"])
        elif dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(self.audit).on_conflict_do_nothing(index_elements=["request_id"])
        else:  # pragma: no cover - other databases: plain insert (the unique index still refuses duplicates)
            stmt = self.audit.insert()
        with self.engine.begin() as conn:
            result = conn.execute(stmt, rows)
        return int(result.rowcount if result.rowcount is not None and result.rowcount >= 0 else len(rows))

    def count_audit(self) -> int:
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(self.audit)).scalar() or 0)

    def audit_request_ids(self) -> list[str]:
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.select(self.audit.c.request_id))]

    def recent_audit(self, since: float) -> list[dict[str, Any]]:
        import sqlalchemy as sa

        cols = [
            self.audit.c.ts,
            self.audit.c.key_id,
            self.audit.c.n_inputs,
            self.audit.c.abstain,
            self.audit.c.actions,
            self.audit.c.reasons,
            self.audit.c.scores,
            self.audit.c.latency_ms,
            self.audit.c.output_policy,
        ]
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(*cols).where(self.audit.c.ts >= since).order_by(self.audit.c.ts))
            return [dict(r._mapping) for r in rows]

    # -- events ----------------------------------------------------------------------------------
    def add_event(self, kind: str, detail: dict[str, Any], ts: float | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                self.events.insert().values(ts=time.time() if ts is None else ts, kind=kind, detail=json.dumps(detail))
            )

    def list_events(self, kind: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        import sqlalchemy as sa

        q = sa.select(self.events).order_by(self.events.c.id.desc()).limit(limit)
        if kind is not None:
            q = q.where(self.events.c.kind == kind)
        with self.engine.connect() as conn:
            return [{"ts": r.ts, "kind": r.kind, "detail": json.loads(r.detail)} for r in conn.execute(q)]

    # -- keys ------------------------------------------------------------------------------------
    def add_key(self, row: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(self.keys.insert().values(**row))

    def get_key(self, key_id: str) -> dict[str, Any] | None:
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            r = conn.execute(sa.select(self.keys).where(self.keys.c.id == key_id)).first()
        return dict(r._mapping) if r is not None else None

    def list_keys(self) -> list[dict[str, Any]]:
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(self.keys).order_by(self.keys.c.created_at))]

    def revoke_key(self, key_id: str) -> bool:
        import sqlalchemy as sa

        with self.engine.begin() as conn:
            r = conn.execute(
                sa.update(self.keys)
                .where(self.keys.c.id == key_id, self.keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
        return bool(r.rowcount)

    def dispose(self) -> None:
        self.engine.dispose()


def dumps(values: Iterable[Any]) -> str:
    return json.dumps(list(values), separators=(",", ":"))
