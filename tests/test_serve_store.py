"""The audit log loses nothing: one record per answered request under concurrent load, on SQLite and on a
real PostgreSQL server that is stopped and restarted in the middle of the load; the spool replays exactly
once; migrations upgrade an old database in place."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from bastion.serve.auditlog import AuditLog
from bastion.serve.config import load_config
from bastion.serve.keys import create_key
from bastion.serve.server import build_app
from bastion.serve.store import MIGRATIONS, Store
from serve_helpers import running


def _load(url: str, key: str, images: list, n: int, workers: int, on_progress=None) -> list[httpx.Response]:
    """n single-image requests from `workers` concurrent clients; returns every response."""
    out: list[httpx.Response] = []
    lock = threading.Lock()
    counter = iter(range(n))

    def worker() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                r = c.post("/v1/predict", json={"inputs": images[i % len(images)]})
                with lock:
                    out.append(r)
                    if on_progress is not None:
                        on_progress(len(out))

    with ThreadPoolExecutor(workers) as ex:
        for f in [ex.submit(worker) for _ in range(workers)]:
            f.result()
    return out


def _service(mnist_cnn, mnist, store, spool):
    # a load generator replays a few hundred images: PRADA rightly finds that odd, so flag instead of block
    cfg = load_config(
        None,
        limits={"rate": 1e6, "burst": 10**6},
        drift={"window": 200, "permutations": 99},
        extraction={"action": "flag"},
    )
    return build_app(model=mnist_cnn, reference=mnist, config=cfg, store=store, spool=str(spool))[0]


def _wait_drained(url: str, admin: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        h = httpx.get(url + "/health", timeout=10).json()
        if h["spooled"] == 0 and h["audit_store"] == "up":
            return h
        if time.monotonic() > deadline:
            raise AssertionError(f"spool not drained: {h}")
        time.sleep(0.3)


def test_sqlite_one_record_per_answer_under_concurrent_load(tmp_path, mnist_cnn, mnist):
    store = Store(f"sqlite:///{tmp_path / 'a.db'}")
    key, _ = create_key(store, "client")
    images = [x.tolist() for x in mnist.x_test[500:600]]
    with running(_service(mnist_cnn, mnist, store, tmp_path / "spool.jsonl")) as url:
        responses = _load(url, key, images, 1500, 16)
    ok = [r for r in responses if r.status_code == 200]
    assert len(ok) == 1500, {r.status_code for r in responses}
    assert store.count_audit() == len(ok)
    assert sorted(store.audit_request_ids()) == sorted(r.json()["request_id"] for r in ok)


import pg_helpers as postgres  # noqa: E402


@pytest.fixture
def pg():
    why = postgres.unavailable()
    if why is not None:
        if os.environ.get("BASTION_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"BASTION_REQUIRE_POSTGRES=1 but {why}")
        pytest.skip(why)  # a developer machine without PostgreSQL; CI sets BASTION_REQUIRE_POSTGRES=1 (fail above)
    server = postgres.TempPostgres().init()
    try:
        server.start()
        server.wait_ready()
        yield server
    finally:
        server.stop("immediate")
        server.remove()


def test_postgres_outage_mid_load_loses_no_record_and_duplicates_none(tmp_path, pg, mnist_cnn, mnist):
    store = Store(pg.url)
    assert store.version == MIGRATIONS[-1][0]
    key, _ = create_key(store, "client")
    admin, _ = create_key(store, "admin")
    images = [x.tolist() for x in mnist.x_test[500:600]]
    n, outage = 2000, {}

    def progress(done: int) -> None:  # stop the database a third of the way through, restart it 3 s later
        if done == n // 3 and not outage:
            outage["stopped_at"] = done
            pg.stop("fast")

            def restart() -> None:
                time.sleep(3)
                pg.start()
                outage["restarted"] = True

            threading.Thread(target=restart, daemon=True).start()

    app = _service(mnist_cnn, mnist, store, tmp_path / "spool.jsonl")
    with running(app) as url:
        responses = _load(url, key, images, n, 16, progress)
        assert outage.get("stopped_at"), "the outage never happened"
        while not outage.get("restarted"):
            time.sleep(0.2)
        health = _wait_drained(url, admin)
        stats = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {admin}"}).text
    codes = {}
    for r in responses:
        codes[r.status_code] = codes.get(r.status_code, 0) + 1
    assert set(codes) <= {200, 503}, codes  # it kept answering (503 only if it could not spool)
    ok = [r for r in responses if r.status_code == 200]
    assert len(ok) == n, codes  # the spool was writable: nothing refused
    ids = store.audit_request_ids()
    assert len(ids) == len(set(ids)) == len(ok)  # exactly one record per answered request
    assert set(ids) == {r.json()["request_id"] for r in ok}
    assert health["audit_store"] == "up" and "bastion_audit_spooled 0.0" in stats
    log = app.state.audit.stats
    assert log["outages"] >= 1 and log["spooled"] > 0, log  # the outage was real: records went to the spool ...
    assert log["replayed"] >= log["spooled"] and log["committed"] + log["spooled"] == n, log  # ... and came back


def test_spool_replay_is_idempotent_and_unwritable_spool_fails_loudly(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'b.db'}")
    rec = {
        "request_id": "r1",
        "ts": 1.0,
        "key_id": "k",
        "input_sha256": "0" * 64,
        "n_inputs": 1,
        "labels": "[1]",
        "abstain": "[false]",
        "actions": '["answer"]',
        "reasons": "[[]]",
        "scores": "[{}]",
        "latency_ms": 1.0,
        "client_status": "ok",
    }
    assert store.insert_audit([rec]) == 1
    assert store.insert_audit([rec, {**rec, "request_id": "r2"}]) == 1  # r1 is not stored twice
    assert store.count_audit() == 2
    # a spool holding a record the database already has (its commit was acknowledged too late) replays once
    spool = tmp_path / "spool.jsonl"
    import json

    spool.write_text(json.dumps(rec) + "\n" + json.dumps({**rec, "request_id": "r3"}) + "\n")
    log = AuditLog(store, spool, retry_seconds=0.1)
    deadline = time.monotonic() + 30  # the writer thread replays the spool on its own, before any close()
    while spool.read_text() != "" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.count_audit() == 3 and spool.read_text() == "" and log.stats["replayed"] == 2, log.stats
    log.close()
    # database unreachable and the spool cannot be written: the future fails (the service answers 503)
    down = Store(f"sqlite:///{tmp_path / 'c.db'}")
    down.engine.dispose()
    down.audit = down.audit.to_metadata(__import__("sqlalchemy").MetaData(), name="no_such_table")
    log = AuditLog(down, tmp_path, retry_seconds=0.1)  # the spool path is a directory: not writable as a file
    with pytest.raises(RuntimeError, match="spool"):
        log.submit({**rec, "request_id": "r4"}).result(10)
    log.close()


def test_migrations_upgrade_an_old_database_in_place(tmp_path):
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    version = sa.Table(
        "bastion_schema",
        meta,
        sa.Column("version", sa.Integer),
        sa.Column("applied_at", sa.Float),
        sa.Column("description", sa.String(200)),
    )
    with engine.begin() as conn:  # a database written by a version-1 service, with one record
        meta.create_all(conn)
        MIGRATIONS[0][2](conn, sa.MetaData())
        conn.execute(version.insert().values(version=1, applied_at=0.0, description="v1"))
        conn.execute(
            sa.text(
                "INSERT INTO audit_records (request_id, ts, key_id, input_sha256, n_inputs, labels, "
                "abstain, actions, reasons, scores, latency_ms) VALUES ('old', 0, 'k', '', 1, '[]', '[]', "
                "'[]', '[]', '[]', 1)"
            )
        )
    engine.dispose()
    store = Store(url)
    assert store.version == MIGRATIONS[-1][0] == 3
    assert store.count_audit() == 1 and {"client_status", "output_policy"} <= set(store.audit.c.keys())
    assert Store(url).version == 3  # idempotent
