"""API keys: random secrets shown once, stored only as salted hashes, compared in constant time.

A key reads ``bst_<id>_<secret>``: the id (public, 12 hex characters) finds the row; the secret (32
random bytes, URL-safe base64) is checked against ``SHA-256(salt || secret)`` with
:func:`hmac.compare_digest`. A fast hash is the right one here: unlike a password, the secret carries
256 bits of entropy, so nothing can be guessed offline from a leaked digest, and verification must cost
microseconds on every request. Roles: ``client`` (predict) and ``admin`` (also metrics, dashboard and
the admin API). Keys travel as ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from .store import Store

__all__ = ["ROLES", "KeyInfo", "KeyRing", "KeyStoreUnavailable", "create_key", "parse_key"]

ROLES = ("client", "admin")
_PREFIX = "bst_"


class KeyStoreUnavailable(RuntimeError):
    """The database holding the keys cannot be reached and the key was not seen before."""


@dataclass(frozen=True)
class KeyInfo:
    id: str
    role: str
    label: str


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode("utf-8")).hexdigest()


def parse_key(key: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed key, else None."""
    if not isinstance(key, str) or not key.startswith(_PREFIX) or len(key) > 200:
        return None
    parts = key[len(_PREFIX) :].split("_", 1)
    if len(parts) != 2 or len(parts[0]) != 12 or not parts[1]:
        return None
    return parts[0], parts[1]


def create_key(store: Store, role: str, label: str = "") -> tuple[str, KeyInfo]:
    """Create a key with ``role``; return the full key (shown once, never stored) and its info."""
    if role not in ROLES:
        raise UsageError(f"unknown role {role!r}: choose client or admin")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    store.add_key(
        {
            "id": key_id,
            "salt": salt,
            "digest": _digest(salt, secret),
            "role": role,
            "label": str(label)[:200],
            "created_at": time.time(),
            "revoked_at": None,
        }
    )
    return f"{_PREFIX}{key_id}_{secret}", KeyInfo(key_id, role, str(label))


class KeyRing:
    """Verifies keys against the store, caching rows for ``ttl`` seconds (a revocation applies within it).

    ``clock`` (seconds, monotonic) times the cache: tests pass a clock they advance instead of sleeping.
    """

    def __init__(self, store: Store, ttl: float = 2.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.ttl = float(ttl)
        self.clock = clock
        self._cache: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._lock = threading.Lock()

    def _row(self, key_id: str) -> dict[str, Any] | None:
        now = self.clock()
        with self._lock:
            hit = self._cache.get(key_id)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        try:
            row = self.store.get_key(key_id)
        except Exception as exc:  # noqa: BLE001 - the key store is down: a key seen before stays valid meanwhile
            if hit is not None:
                return hit[1]
            raise KeyStoreUnavailable(str(exc).splitlines()[0]) from None
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key_id] = (now, row)
        return row

    def verify(self, key: str | None) -> KeyInfo | None:
        """The key's info when it is valid and not revoked, else None (the same time either way)."""
        parsed = parse_key(key) if key else None
        if parsed is None:
            hmac.compare_digest("0" * 64, _digest("00", "x"))  # same work as a real comparison
            return None
        key_id, secret = parsed
        row = self._row(key_id)
        if row is None:
            hmac.compare_digest("0" * 64, _digest("00", secret))
            return None
        ok = hmac.compare_digest(row["digest"], _digest(row["salt"], secret))
        if not ok or row["revoked_at"] is not None:
            return None
        return KeyInfo(row["id"], row["role"], row["label"])

    def forget(self, key_id: str) -> None:
        with self._lock:
            self._cache.pop(key_id, None)
