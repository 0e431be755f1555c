"""The audit log: every answered request gets exactly one record, even while the database is down.

Requests hand their record to :meth:`AuditLog.submit` and wait for the returned future before they
answer: the answer leaves only once its record is durable. A writer thread commits records in groups
(one transaction for all that arrived meanwhile: group commit keeps the cost per request small). When
the database cannot be reached, the group is appended to a local spool file (JSON lines, flushed and
fsync'ed) instead, and a *store outage* is counted; the writer retries the database every
``retry_seconds`` and, once it answers, replays the spool — inserting each request id at most once, so a
commit whose acknowledgement was lost is not stored twice — and then truncates it. Only when the spool
cannot be written either does the future fail (the service answers 503: it cannot keep its promise).
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from .store import Store

__all__ = ["AuditLog"]


class AuditLog:
    def __init__(self, store: Store, spool: str | Path, *, max_group: int = 512, retry_seconds: float = 1.0) -> None:
        self.store = store
        self.spool = Path(spool)
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        self.max_group = int(max_group)
        self.retry_seconds = float(retry_seconds)
        self._q: queue.Queue[tuple[dict[str, Any], Future] | None] = queue.Queue()
        self._db_ok = True
        self._last_try = 0.0
        self.stats = {"committed": 0, "spooled": 0, "replayed": 0, "failed": 0, "outages": 0}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="bastion-audit-log", daemon=True)
        self._thread.start()

    @property
    def db_ok(self) -> bool:
        return self._db_ok

    def spooled(self) -> int:
        """Records waiting in the spool file."""
        try:
            with self.spool.open("rb") as f:
                return sum(1 for line in f if line.strip())
        except FileNotFoundError:
            return 0

    def submit(self, record: dict[str, Any]) -> Future:
        fut: Future = Future()
        self._q.put((record, fut))
        return fut

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, try to replay the spool once more, stop the thread."""
        self._q.put(None)
        self._thread.join(timeout)

    # -- writer thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        stop = False
        while not stop:
            try:
                item = self._q.get(timeout=self.retry_seconds)
            except queue.Empty:
                self._maybe_replay()
                continue
            group: list[tuple[dict[str, Any], Future]] = []
            if item is None:
                stop = True
            else:
                group.append(item)
            while len(group) < self.max_group:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
            if group:
                self._write(group)
            self._maybe_replay(force=stop)

    def _write(self, group: list[tuple[dict[str, Any], Future]]) -> None:
        records = [r for r, _ in group]
        error: BaseException | None = None
        if self._db_ok or time.monotonic() - self._last_try >= self.retry_seconds:
            if not self._db_ok and self.spooled():
                self._maybe_replay(force=True)  # keep the order: older spooled records first
            if self._db_ok or not self.spooled():
                try:
                    self.store.insert_audit(records)
                    self._set_db(True)
                    with self._lock:
                        self.stats["committed"] += len(records)
                    for _, f in group:
                        f.set_result("db")
                    return
                except Exception as exc:  # noqa: BLE001 - any database failure goes to the spool
                    error = exc
                    self._set_db(False)
        try:
            self._append_spool(records)
            with self._lock:
                self.stats["spooled"] += len(records)
            for _, f in group:
                f.set_result("spool")
        except OSError as exc:
            with self._lock:
                self.stats["failed"] += len(records)
            for _, f in group:
                f.set_exception(RuntimeError(f"audit store and spool both unavailable: {exc}; db: {error}"))

    def _set_db(self, ok: bool) -> None:
        if self._db_ok and not ok:
            with self._lock:
                self.stats["outages"] += 1
        self._db_ok = ok
        self._last_try = time.monotonic()

    def _append_spool(self, records: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode("utf-8")
        fd = os.open(self.spool, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _maybe_replay(self, force: bool = False) -> None:
        if not self.spool.is_file() or self.spool.stat().st_size == 0:
            return
        if not force and time.monotonic() - self._last_try < self.retry_seconds:
            return
        records = []
        try:
            with self.spool.open("r", encoding="utf-8") as f:
                for line in f:
                    line = line.strip()
                    if line:
                        try:
                            records.append(json.loads(line))
                        except json.JSONDecodeError:  # a torn last line after a crash: never acknowledged
                            continue
        except OSError:
            return
        try:
            for i in range(0, len(records), 1000):
                self.store.insert_audit(records[i : i + 1000])
        except Exception:  # noqa: BLE001 - still down; try again later
            self._set_db(False)
            return
        self._set_db(True)
        with self._lock:
            self.stats["replayed"] += len(records)
        # only this thread appends to the spool, so nothing arrived between the read and the truncation
        with self.spool.open("r+b") as f:
            f.truncate(0)
            os.fsync(f.fileno())
