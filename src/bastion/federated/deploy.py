"""Run federated experiments on a real Flower deployment on this machine (loopback), not the simulation.

:func:`local_federation` starts what a real federation runs, each as its own process of this environment:

- ``flower-superlink --insecure --host 127.0.0.1 --port P --disable-runtime-dependency-installation``: one
  HTTP port serves the Fleet, Control and Runtime APIs (``/health`` answers when it is up); it starts a
  ``flower-superexec`` that launches a ``flwr-serverapp`` process per run;
- N x ``flower-supernode --insecure --superlink 127.0.0.1:P --port Q_i --node-config "partition-id=i
  num-partitions=N"``: ``Q_i`` is its own Runtime API for its ``flower-superexec``, which launches a
  ``flwr-clientapp`` process per message.

:meth:`Federation.run` then submits the app of ``bastion/federated/flwr_app/`` (whose components are
``bastion.federated.app:server_app`` and ``:client_app``) with ``flwr run APP bastion --run-config FILE
--format json``, ``bastion`` being a SuperLink connection in a private ``FLWR_HOME/config.toml``, and waits
until the ServerApp has written one JSON line per cell to ``out`` (and checks ``flwr ls --run-id``). The
app bundle carries only its ``pyproject.toml``: every process imports ``bastion`` from this environment,
and nothing is installed at run time.

Every process gets its own ``FLWR_HOME`` in a work directory (the user's ``~/.flwr`` is never read or
written), logs to a file there, and is stopped on the way out — also on errors and KeyboardInterrupt —
with the processes it started (terminate, then kill). Every wait has a deadline and its error names the
process and the tail of its log. POSIX only (process groups; ``/proc`` to find grandchildren on Linux).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .spec import FLSpec

__all__ = ["APP_NAME", "Federation", "local_federation", "run_deployed"]

APP_NAME = "bastion-fl"
"""The Flower app's directory and project name (``flwr`` accepts letters, digits and hyphens only)."""
CONNECTION = "bastion"
_GRACE = 5.0


def _executable(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise UsageError(f"{name} is not installed next to {sys.executable}: pip install 'bastion[federated]'")
    return str(path)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace") if path.is_file() else ""
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty log)"


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: grandchildren are reaped by init, or not at all)."""
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text() if Path("/proc").is_dir() else ") R"
    except ProcessLookupError:
        return False
    except OSError:  # another user's process, or a /proc entry going away: ask again later
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _descendants(roots: Sequence[int]) -> set[int]:
    """``roots`` and every process below them (Linux ``/proc``; elsewhere just ``roots``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*") if Path("/proc").is_dir() else ():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[-1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def _signal_group(pgid: int, sig: int) -> None:
    if pgid != os.getpgrp():  # never our own group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


class Federation:
    """A running SuperLink and its SuperNodes (made by :func:`local_federation`)."""

    def __init__(self, n_supernodes: int, workdir: Path) -> None:
        self.n_supernodes = n_supernodes
        self.workdir = workdir
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.node_ports: list[int] = []
        self.pids: set[int] = set()
        """Every process of the federation seen so far (its SuperExecs and app processes once stopped)."""
        self._procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        self._runs = 0
        cli_home = workdir / "flwr-cli"
        cli_home.mkdir(parents=True, exist_ok=True)
        (cli_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{self.address}"\ninsecure = true\n'
        )

    def _env(self, flwr_home: Path) -> dict[str, str]:
        env = dict(os.environ)
        bindir = str(Path(sys.executable).parent)  # the SuperLink and SuperNodes start flower-superexec by name
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
        env["FLWR_HOME"] = str(flwr_home)
        env["FLWR_TELEMETRY_ENABLED"] = "0"
        env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def _spawn(self, name: str, args: list[str]) -> None:
        home = self.workdir / name
        home.mkdir(parents=True, exist_ok=True)
        log = self.workdir / f"{name}.log"
        with log.open("wb") as f:  # the child keeps its own copy of the file descriptor
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                cwd=home,
                env=self._env(home),
                start_new_session=True,  # its own process group: Ctrl-C reaches us, we stop it in order
            )
        self._procs[name] = (proc, log)
        self.pids.add(proc.pid)

    def _failure(self, name: str, what: str) -> RuntimeError:
        proc, log = self._procs[name]
        code = proc.poll()
        state = "" if code is None else f" (it exited with code {code})"
        return RuntimeError(f"{name} {what}{state}; the end of {log}:\n{_tail(log)}")

    def check_alive(self) -> None:
        """Raise naming the first process of the federation that has exited."""
        for name, (proc, _) in self._procs.items():
            if proc.poll() is not None:
                raise self._failure(name, "stopped unexpectedly")

    def _cli(self, args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
        try:
            return subprocess.run(
                [_executable("flwr"), *args],
                capture_output=True,
                timeout=timeout,
                env=self._env(self.workdir / "flwr-cli"),
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"`flwr {' '.join(args)}` did not answer within {timeout:.0f} s") from None

    def flwr(self, *args: str, timeout: float = 60.0) -> dict[str, Any]:
        """``flwr ARGS --format json`` against this federation's SuperLink; its JSON answer."""
        done = self._cli([*args, "--format", "json"], timeout)
        out = done.stdout.decode(errors="replace")
        try:
            answer = json.loads(out[out.index("{") :])
        except ValueError:
            err = " ".join((done.stderr.decode(errors="replace") or out).split())
            raise RuntimeError(f"`flwr {' '.join(args)}` failed (exit {done.returncode}): {err[-500:]}") from None
        if not answer.get("success", False):
            err = " ".join(str(answer.get("error-message", answer)).split())
            raise RuntimeError(f"`flwr {' '.join(args)}` failed: {err}")
        return dict(answer)

    def run_log(self, run_id: str, lines: int = 25) -> str:
        """The end of a run's log (its ServerApp's output: ``flwr log RUN_ID --show``)."""
        done = self._cli(["log", run_id, CONNECTION, "--show"], 60.0)
        text = (done.stdout + done.stderr).decode(errors="replace").rstrip()
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def start(self, timeout: float) -> None:
        """Start the SuperLink, then the SuperNodes; return once all are connected."""
        deadline = time.monotonic() + timeout
        link = [_executable("flower-superlink"), "--insecure", "--disable-runtime-dependency-installation"]
        self._spawn("superlink", [*link, "--host", "127.0.0.1", "--port", str(self.port)])
        url = f"http://{self.address}/health"
        while not _healthy(url):
            self._wait_step("superlink", "did not answer on " + url, deadline, timeout)
        for i in range(self.n_supernodes):
            port = _free_port()
            self.node_ports.append(port)
            config = f"partition-id={i} num-partitions={self.n_supernodes}"
            node = [_executable("flower-supernode"), "--insecure", "--superlink", self.address]
            self._spawn(f"supernode-{i}", [*node, "--port", str(port), "--node-config", config])
        while self.online() < self.n_supernodes:
            self._wait_step("superlink", f"did not list {self.n_supernodes} SuperNodes online", deadline, timeout)

    def _wait_step(self, name: str, what: str, deadline: float, timeout: float) -> None:
        self.check_alive()
        if time.monotonic() > deadline:
            raise self._failure(name, f"{what} within {timeout:.0f} s")
        time.sleep(0.2)

    def online(self) -> int:
        """How many SuperNodes the SuperLink lists as online."""
        nodes = self.flwr("supernode", "list").get("nodes", [])
        return sum(1 for n in nodes if n.get("status") == "online")

    def run(
        self, specs: Sequence[FLSpec], *, out: Path | None = None, timeout: float = 600.0, app: Path | None = None
    ) -> list[dict[str, Any]]:
        """Submit ``specs`` as one Flower run and return its results (one per spec, in order).

        Args:
            out: the JSON-lines file the ServerApp writes (emptied first; default: in the work directory).
            timeout: seconds the run may take once submitted.
            app: the Flower app directory (default: a copy of ``bastion/federated/flwr_app``).
        """
        specs = _checked(specs, self.n_supernodes)
        if not specs:
            return []
        self._runs += 1
        out = (out or self.workdir / f"results-{self._runs}.jsonl").resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("")
        app = app.resolve() if app is not None else self._app_copy()
        if not (app / "pyproject.toml").is_file():
            raise UsageError(f"{app} is no Flower app: it has no pyproject.toml")
        import tomli_w  # a dependency of flwr

        config = self.workdir / f"run-config-{self._runs}.toml"
        cells = json.dumps([s.to_dict() for s in specs])
        config.write_text(tomli_w.dumps({"cells": cells, "out": str(out)}))
        self.check_alive()
        run_id = str(self.flwr("run", str(app), CONNECTION, "--run-config", str(config))["run-id"])
        return self._wait_run(run_id, out, len(specs), timeout)

    def _app_copy(self) -> Path:
        app = self.workdir / APP_NAME
        app.mkdir(exist_ok=True)
        text = (resources.files("bastion.federated") / "flwr_app" / "pyproject.toml").read_text()
        (app / "pyproject.toml").write_text(text)
        return app

    def _wait_run(self, run_id: str, out: Path, n: int, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        next_status = time.monotonic() + 10.0
        while True:
            results = _read_results(out)
            if len(results) >= n:
                return results[:n]
            self.check_alive()
            if time.monotonic() >= next_status:
                status = self.run_status(run_id)
                results = _read_results(out)
                if status.startswith("finished") and len(results) < n:
                    raise RuntimeError(
                        f"run {run_id} {status} after {len(results)} of {n} cells; the end of its log "
                        f"(flwr log {run_id}):\n{self.run_log(run_id)}"
                    )
                next_status = time.monotonic() + 10.0
            if time.monotonic() > deadline:
                raise self._failure("superlink", f"has not finished run {run_id} within {timeout:.0f} s")
            time.sleep(0.5)

    def run_status(self, run_id: str) -> str:
        """The SuperLink's status of a run (``running``, ``finished:completed``, ``finished:failed``...)."""
        runs = self.flwr("list", "--run-id", run_id).get("runs", [])
        return str(runs[0].get("status", "unknown")) if runs else "unknown"

    def stop(self) -> None:
        """Stop every process of the federation, with the processes they started: terminate, then kill."""
        procs = [p for p, _ in reversed(self._procs.values())]  # the SuperNodes first
        tree = _descendants([p.pid for p in procs])
        self.pids |= tree
        groups = set()
        for pid in tree:
            with contextlib.suppress(OSError):
                groups.add(os.getpgid(pid))
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=_GRACE)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=_GRACE)
        for g in groups:
            _signal_group(g, signal.SIGTERM)
        deadline = time.monotonic() + _GRACE
        while any(_alive(pid) for pid in tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        for g in groups:
            _signal_group(g, signal.SIGKILL)
        for pid in tree:
            if _alive(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _read_results(out: Path) -> list[dict[str, Any]]:
    try:
        text = out.read_text()
    except OSError:
        return []
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n") and line.strip()]


def _checked(specs: Sequence[FLSpec], n_supernodes: int) -> list[FLSpec]:
    """``specs``, once known to be runnable on ``n_supernodes`` SuperNodes (each one client's partition)."""
    from .simulate import _check

    _check(specs)
    wrong = sorted({s.clients for s in specs} - {n_supernodes})
    if wrong:
        raise UsageError(
            f"a deployment of {n_supernodes} SuperNodes runs {n_supernodes}-client specs only, not {wrong}"
        )
    return list(specs)


@contextlib.contextmanager
def local_federation(
    n_supernodes: int, *, workdir: str | Path | None = None, start_timeout: float = 120.0
) -> Iterator[Federation]:
    """A SuperLink and ``n_supernodes`` SuperNodes on loopback, for the ``with`` block; stopped after it.

    Args:
        workdir: where the processes' ``FLWR_HOME``s, logs and results go (kept); default a temporary
            directory, removed afterwards unless something failed.
        start_timeout: seconds the SuperLink and all SuperNodes may take to come up.
    """
    if isinstance(n_supernodes, bool) or not isinstance(n_supernodes, int) or n_supernodes < 1:
        raise UsageError(f"a federation needs a whole number >= 1 of SuperNodes, got {n_supernodes!r}")
    for name in ("flower-superlink", "flower-supernode", "flower-superexec", "flwr"):
        _executable(name)
    temporary = workdir is None
    path = Path(tempfile.mkdtemp(prefix="bastion-fl-")) if workdir is None else Path(workdir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    fed = Federation(n_supernodes, path)
    ok = False
    try:
        fed.start(start_timeout)
        yield fed
        ok = True
    finally:
        fed.stop()
        if temporary and ok:
            shutil.rmtree(path, ignore_errors=True)


def run_deployed(
    specs: FLSpec | Sequence[FLSpec],
    *,
    n_supernodes: int | None = None,
    workdir: str | Path | None = None,
    timeout: float = 1800.0,
    start_timeout: float = 120.0,
) -> list[dict[str, Any]]:
    """Run ``specs`` on a fresh loopback deployment (:func:`local_federation`); one result per spec.

    All specs must have as many clients as there are SuperNodes (default: the specs' ``clients``), since
    each SuperNode is one client's partition. ``timeout``: seconds the whole run may take once submitted.
    """
    specs = [specs] if isinstance(specs, FLSpec) else list(specs)
    if not specs:
        return []
    n = specs[0].clients if n_supernodes is None else n_supernodes
    specs = _checked(specs, n)
    with local_federation(n, workdir=workdir, start_timeout=start_timeout) as fed:
        return fed.run(specs, timeout=timeout)
