"""Clients' ciphertexts evaluated in a child process, so that bytes which crash TenSEAL crash only the child.

TenSEAL's parsers (SEAL's deserialisation under them) trust what they read: crafted or truncated bytes can end the
process with a segmentation fault instead of an exception — measured with ``ts.ckks_tensor_from(ctx, b"garbage" *
10)`` and with truncated ciphertexts. A service that evaluated client bytes in its own process would die with them.
:class:`IsolatedHEServer` has :class:`~.protocol.HEServer`'s interface but runs ``evaluate`` in one spawned child
(a :class:`~concurrent.futures.ProcessPoolExecutor` of one worker that builds its ``HEServer`` once and keeps its
context cache). When the child dies mid-request the request gets :class:`~.protocol.HEError` and a fresh child is
started; the service goes on answering. Evaluations are serialised (one child, one request in it at a time), so a
crash is always blamed on the request that caused it, and one that runs past ``timeout`` is killed the same way.

The framing is still checked first, in this process and in pure Python (:meth:`IsolatedHEServer.samples`):
isolation is for what only TenSEAL can reject.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ...errors import UsageError
from ...models.base import Closing
from .program import HEProgram
from .protocol import HEError, HEServer, unpack

__all__ = ["IsolatedHEServer"]

_CRASHED = (
    "the encrypted payload could not be decoded: a context or ciphertext is corrupt or was not made for this "
    "model's parameters (the evaluator rejected it); build the request with HEClient from this server's spec"
)

_server: HEServer | None = None  # the child's evaluator, built once by _start


def _start(program: HEProgram, model: str) -> None:
    """The child's initializer: its HEServer. Ctrl-C is left to the parent, which shuts the child down."""
    global _server
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _server = HEServer(program, model=model)


def _evaluate(context: bytes, payload: bytes) -> bytes:
    """``HEServer.evaluate`` in the child; an error TenSEAL raises on a client's bytes becomes :class:`HEError`."""
    if _server is None:  # the initializer did not run: a bug, not the client's doing
        raise RuntimeError("the HE evaluator process has no server (its initializer did not run)")
    try:
        return _server.evaluate(context, payload)
    except HEError:
        raise
    except (RuntimeError, ValueError, TypeError, OverflowError, MemoryError) as exc:
        # parseable bytes TenSEAL still refuses to compute on (another scale or level, sizes that do not match)
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise HEError(
            f"the encrypted payload could not be evaluated ({why}); encrypt with this server's spec"
        ) from None


class IsolatedHEServer(Closing):
    """:class:`~.protocol.HEServer` with ``evaluate`` in a child process (see the module docstring).

    Args:
        program: the compiled model.
        model: its name, reported in :meth:`spec`.
        timeout: seconds one evaluation may take before the child is killed and the request refused.

    Raises:
        UsageError: the child process cannot start (TenSEAL missing or failing there), or ``timeout`` <= 0.
    """

    def __init__(self, program: HEProgram, *, model: str = "", timeout: float = 300.0) -> None:
        if not float(timeout) > 0:
            raise UsageError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.program, self.model, self.timeout = program, model, float(timeout)
        self._spec = HEServer(program, model=model).spec()
        self.params = program.params
        self.restarts = 0  # children replaced after a crash or a timeout
        self._lock = threading.Lock()  # one evaluation in the child at a time
        self._pool: ProcessPoolExecutor | None = None
        self._pid: Future[int] | None = None
        self._spawn()
        try:
            self._child_pid()
        except BrokenProcessPool:
            self.close()
            raise UsageError(
                "the HE evaluator process could not start (it builds an HEServer with TenSEAL): check that "
                "pip install 'bastion[he]' works in this environment"
            ) from None

    def spec(self) -> dict[str, Any]:
        """What a client needs (:meth:`HEServer.spec <bastion.defenses.encrypted.protocol.HEServer.spec>`)."""
        return dict(self._spec)

    def samples(self, payload: bytes) -> int:
        """The number of samples framed in ``payload``, its framing checked in pure Python against this model
        (ciphertexts per chunk, samples per chunk); :class:`HEError` when it is malformed."""
        n, _ = unpack(payload, vectors=self.program.input_dim, max_chunk=self.params.slots)
        return n

    def evaluate(self, context: bytes, payload: bytes) -> bytes:
        """The encrypted scores of ``payload`` under the client's public ``context``, computed in the child.

        Raises:
            HEError: the child refused the request, crashed on it or ran past ``timeout`` (then a new child is
                started for the next request).
            UsageError: the server is closed.
        """
        with self._lock:
            try:
                future = self._submit(context, payload)
            except BrokenProcessPool:  # the child died between requests: not this request's doing
                self._restart()
                future = self._submit(context, payload)
            try:
                return future.result(timeout=self.timeout)
            except HEError as exc:  # raised in the child; re-raised without the child's traceback attached
                raise HEError(str(exc)) from None
            except BrokenProcessPool:
                self._restart()
                raise HEError(_CRASHED) from None
            except FutureTimeout:
                self._kill()
                self._restart()
                raise HEError(
                    f"the encrypted payload took longer than {self.timeout:g} s to evaluate: send fewer samples per "
                    "request"
                ) from None

    def close(self) -> None:
        """Stop the child (waiting for an evaluation in progress); later calls to :meth:`evaluate` are refused."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __repr__(self) -> str:
        return (
            f"IsolatedHEServer(model={self.model!r}, depth={self.program.depth}, "
            f"N={self.params.poly_modulus_degree}, timeout={self.timeout:g}, restarts={self.restarts})"
        )

    # -- the child -------------------------------------------------------------------------------------------
    def _spawn(self) -> None:
        """A new one-worker pool, its worker started at once (the pid request), not at the next client request."""
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),  # no fork of a threaded server
            initializer=_start,
            initargs=(self.program, self.model),
        )
        self._pid = self._pool.submit(os.getpid)

    def _submit(self, context: bytes, payload: bytes) -> Future[bytes]:
        if self._pool is None:
            raise UsageError("this IsolatedHEServer is closed: make a new one")
        return self._pool.submit(_evaluate, context, payload)

    def _child_pid(self) -> int:
        if self._pid is None:  # only before _spawn ran
            raise UsageError("this IsolatedHEServer is closed: make a new one")
        return self._pid.result(timeout=120)

    def _restart(self) -> None:
        """Replace a broken pool (its worker dead or killed) with a fresh one."""
        if self._pool is None:
            raise UsageError("this IsolatedHEServer is closed: make a new one")
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.restarts += 1
        self._spawn()

    def _kill(self) -> None:
        """End the child that runs past the timeout (our own worker, by its pid); the pool then reports it broken."""
        with contextlib.suppress(ProcessLookupError, BrokenProcessPool, FutureTimeout):  # already gone
            os.kill(self._child_pid(), signal.SIGKILL)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
