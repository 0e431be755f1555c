#!/usr/bin/env python
"""Load on the guard service, side by side with a bare FastAPI endpoint serving the same model.

Issue 6's numbers, on loopback, one machine, one run:

1. throughput: 32 concurrent clients sending single-image `mnist-cnn` requests (mnist5k test images) for
   --seconds each, against (a) a bare FastAPI + uvicorn endpoint that runs the model and returns label and
   probabilities, and (b) `bastion serve` with every signal on (confidence abstention, OOD flag by the
   default `activations` detector, MMD drift windows, PRADA per client, rate limits, SQLite audit log). Reported: requests/s, p50 /
   p99 latency, and the ratio guarded / bare (target >= 0.6).
2. paced: 100 requests/s against the guard for --seconds; p99 latency (target < 50 ms).
3. audit count: --requests (20,000) requests from 32 clients; audit records == 200 answers, for SQLite, and
   for PostgreSQL (a throw-away server from Debian's postgresql package) which is stopped a third of the
   way through and restarted 3 s later: the service keeps answering and every answered request has
   exactly one record once the spool has drained.

Both servers are separate processes started by this script (uvicorn, one worker, loopback); the load
generator is this process (asyncio + httpx, keep-alive connections), so it shares the 2 CPU cores with
the server under test — the same for both servers. The load clients replay test images, which PRADA
rightly finds unlike natural traffic, so the guard's extraction action is `flag` here (not `block`).

    python benchmarks/serve_load.py                   # about 6 minutes on 2 cores
    python benchmarks/serve_load.py --seconds 10 --requests 2000 --skip-postgres
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BASTION = str(Path(sys.executable).parent / "bastion")

BARE_APP = textwrap.dedent("""
    import torch, uvicorn
    from fastapi import FastAPI
    from pydantic import BaseModel
    import bastion
    model = bastion.models.load_zoo("mnist-cnn")
    app = FastAPI()
    class Body(BaseModel):
        inputs: list
    @app.post("/v1/predict")
    def predict(body: Body):
        x = torch.tensor(body.inputs, dtype=torch.float32)
        if x.dim() == 3:
            x = x[None]
        with torch.no_grad():
            p = torch.softmax(model.logits(x), 1)
        return {"results": [{"label": int(r.argmax()), "probabilities": r.tolist()} for r in p]}
    @app.get("/health")
    def health():
        return {"status": "ok"}
    uvicorn.run(app, host="127.0.0.1", port=int(__import__("sys").argv[1]), log_level="warning", access_log=False)
""")


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise RuntimeError("server did not come up")
        time.sleep(0.3)


def start_guard(db: str, workdir: Path, env: dict, extra: str = "") -> tuple[subprocess.Popen, str, str, str]:
    key = subprocess.run(
        [BASTION, "keys", "create", "--db", db], capture_output=True, text=True, env=env, check=True
    ).stdout.strip()
    admin = subprocess.run(
        [BASTION, "keys", "create", "--role", "admin", "--db", db], capture_output=True, text=True, env=env, check=True
    ).stdout.strip()
    cfg = workdir / "guard.toml"
    cfg.write_text('[extraction]\naction = "flag"\n[limits]\nrate = 100000.0\nburst = 100000\n' + extra)
    port = free_port()
    proc = subprocess.Popen(
        [
            BASTION,
            "serve",
            "--model",
            "zoo:mnist-cnn",
            "--reference",
            "mnist5k",
            "--db",
            db,
            "--config",
            str(cfg),
            "--port",
            str(port),
            "--spool",
            str(workdir / "spool.jsonl"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_up(url, proc)
    return proc, url, key, admin


async def closed_loop(
    url: str,
    key: str | None,
    images: list,
    *,
    clients: int,
    seconds: float | None = None,
    requests: int | None = None,
    on_progress=None,
) -> dict:
    """`clients` concurrent clients, each sending one request after the previous answer."""
    lat: list[float] = []
    codes: dict[int, int] = {}
    ids: list[str] = []
    sent = 0
    stop_at = time.perf_counter() + seconds if seconds else None
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def client(i: int) -> None:
        nonlocal sent
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as c:
            while True:
                if stop_at is not None and time.perf_counter() >= stop_at:
                    return
                if requests is not None:
                    if sent >= requests:
                        return
                    sent += 1
                body = {"inputs": images[(i * 7919 + len(lat)) % len(images)]}
                t0 = time.perf_counter()
                try:
                    r = await c.post("/v1/predict", json=body)
                    code = r.status_code
                except httpx.TransportError:
                    code = -1
                lat.append(time.perf_counter() - t0)
                codes[code] = codes.get(code, 0) + 1
                if code == 200 and "request_id" in r.json():
                    ids.append(r.json()["request_id"])
                if on_progress is not None:
                    on_progress(len(lat))

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    wall = time.perf_counter() - t0
    a = np.asarray(lat) * 1000
    return {
        "requests": len(lat),
        "seconds": round(wall, 2),
        "rps": round(len(lat) / wall, 1),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "codes": {str(k): v for k, v in sorted(codes.items())},
        "request_ids": ids,
    }


async def paced(url: str, key: str, images: list, *, rate: float, seconds: float) -> dict:
    lat: list[float] = []
    codes: dict[int, int] = {}
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60, limits=httpx.Limits(max_connections=64)
    ) as c:

        async def one(i: int) -> None:
            t0 = time.perf_counter()
            r = await c.post("/v1/predict", json={"inputs": images[i % len(images)]})
            lat.append(time.perf_counter() - t0)
            codes[r.status_code] = codes.get(r.status_code, 0) + 1

        tasks = []
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    a = np.asarray(lat) * 1000
    return {
        "rate": rate,
        "requests": len(lat),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "max_ms": round(float(a.max()), 2),
        "codes": {str(k): v for k, v in sorted(codes.items())},
    }


def count_records(db: str) -> tuple[int, int]:
    sys.path.insert(0, str(ROOT / "src"))
    from bastion.serve.store import Store

    store = Store(db)
    ids = store.audit_request_ids()
    store.dispose()
    return len(ids), len(set(ids))


def wait_drained(url: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        h = httpx.get(url + "/health", timeout=10).json()
        if h["spooled"] == 0 and h["audit_store"] == "up":
            return h
        if time.monotonic() > deadline:
            return h
        time.sleep(0.5)


def audit_count_run(name: str, db: str, workdir: Path, env: dict, images: list, n: int, pg=None) -> dict:
    proc, url, key, admin = start_guard(db, workdir, env)
    outage: dict = {}
    try:

        def progress(done: int) -> None:
            if pg is not None and not outage and done >= n // 3:
                outage["stopped_at"] = done
                pg.stop("fast")
                import threading

                def restart() -> None:
                    time.sleep(3)
                    pg.start()
                    outage["restarted_at"] = time.time()

                threading.Thread(target=restart, daemon=True).start()

        res = asyncio.run(closed_loop(url, key, images, clients=32, requests=n, on_progress=progress))
        if pg is not None:
            while "restarted_at" not in outage:
                time.sleep(0.2)
        health = wait_drained(url)
        metrics = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {admin}"}).text
    finally:
        proc.terminate()
        proc.wait(60)
    records, distinct = count_records(db)
    answered = res["codes"].get("200", 0)
    spooled = next(
        (float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("bastion_audit_spooled ")), None
    )
    ids_match = None
    out = {
        "store": name,
        "requests": res["requests"],
        "codes": res["codes"],
        "answered": answered,
        "audit_records": records,
        "distinct_request_ids": distinct,
        "rps": res["rps"],
        "p99_ms": res["p99_ms"],
        "health_after": health,
        "spooled_after": spooled,
        **({"outage": outage} if pg is not None else {}),
        "pass": records == distinct == answered,
    }
    del ids_match
    return out


def signal_rates(work: Path, env: dict, data, detector: str) -> dict:
    """Share of inputs the OOD signal flags: 200 unseen clean test images vs PGD-40 (eps 0.3) on the same."""
    import torch

    from bastion.attacks import PGD
    from bastion.models import load_zoo

    x, y = data.x_test[500:700], data.y_test[500:700]
    adv = PGD(eps=0.3, steps=40)(load_zoo("mnist-cnn"), x, y).x_adv
    db = f"sqlite:///{work / f'signals-{detector}.db'}"
    proc, url, key, _ = start_guard(db, work, env, f'[ood]\ndetector = "{detector}"\nfpr = 0.05\n')
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:

            def rate(batch: torch.Tensor) -> float:
                res = [
                    r
                    for i in range(0, len(batch), 16)
                    for r in c.post("/v1/predict", json={"inputs": batch[i : i + 16].tolist()}).json()["results"]
                ]
                return round(float(np.mean(["ood" in r["reasons"] for r in res])), 4)

            return {"detector": detector, "fpr_target": 0.05, "clean_flagged": rate(x), "pgd_flagged": rate(adv)}
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--skip-postgres", action="store_true")
    ap.add_argument("--skip-count", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import bastion

    data = bastion.load_dataset("mnist5k")
    images = [x.tolist() for x in data.x_test[500:]]
    work = Path(tempfile.mkdtemp(prefix="bastion-serve-bench-"))
    env = {**os.environ, "BASTION_HOME": os.environ.get("BASTION_HOME", str(Path.home() / ".cache" / "bastion"))}
    emit({"machine": {"cpus": os.cpu_count()}, "clients": args.clients, "seconds": args.seconds, "workdir": str(work)})

    # 1. throughput, bare vs guarded (guarded first, then bare, then guarded again: the median pair is reported)
    port = free_port()
    bare = subprocess.Popen(
        [sys.executable, "-c", BARE_APP, str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    bare_url = f"http://127.0.0.1:{port}"
    wait_up(bare_url, bare)
    guard, url, key, admin = start_guard(f"sqlite:///{work / 'tput.db'}", work, env)
    results: dict[str, list[dict]] = {"bare": [], "guarded": []}
    try:
        for name in ("guarded", "bare", "guarded", "bare"):
            target, k = (url, key) if name == "guarded" else (bare_url, None)
            asyncio.run(closed_loop(target, k, images, clients=args.clients, seconds=3))  # warm-up
            r = asyncio.run(closed_loop(target, k, images, clients=args.clients, seconds=args.seconds))
            r.pop("request_ids")
            results[name].append(r)
            emit({"server": name, **r})
        bare.terminate()
        p = asyncio.run(paced(url, key, images, rate=100, seconds=args.seconds))
        emit({"server": "guarded", "paced": p})
        metrics = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {admin}"}).text
        summary = [
            line
            for line in metrics.splitlines()
            if line.startswith(
                (
                    "bastion_flags_total",
                    "bastion_abstentions_total",
                    "bastion_inputs_total",
                    "bastion_drift_alarms_total",
                )
            )
        ]
        emit({"guard_metrics": summary})
    finally:
        guard.terminate()
        bare.terminate()
        guard.wait(60)
    g = max(r["rps"] for r in results["guarded"])
    b = max(r["rps"] for r in results["bare"])
    emit(
        {
            "check": "throughput guarded / bare (best of 2 each)",
            "value": round(g / b, 3),
            "guarded_rps": g,
            "bare_rps": b,
            "p99_ms": {
                "guarded": min(r["p99_ms"] for r in results["guarded"]),
                "bare": min(r["p99_ms"] for r in results["bare"]),
            },
            "target": ">= 0.6",
            "pass": g >= 0.6 * b,
        }
    )
    emit(
        {
            "check": "p99 latency at 100 requests/s (guarded)",
            "value": p["p99_ms"],
            "target": "< 50 ms",
            "pass": p["p99_ms"] < 50 and p["codes"] == {"200": p["requests"]},
        }
    )

    for det in ("mahalanobis", "activations"):
        emit({"signal": "ood", **signal_rates(work, env, data, det)})
    if args.skip_count:
        return
    # 3. audit records == answers, SQLite then PostgreSQL with an outage
    r = audit_count_run("sqlite", f"sqlite:///{work / 'count.db'}", work, env, images, args.requests)
    emit({"check": f"audit records == answered requests ({args.requests}, SQLite)", **r})
    if args.skip_postgres:
        return
    sys.path.insert(0, str(ROOT / "tests"))
    import pg_helpers

    why = pg_helpers.unavailable()
    if why:
        emit({"check": "PostgreSQL", "skipped": why})
        return
    pg = pg_helpers.TempPostgres().init()
    pg.start()
    pg.wait_ready()
    try:
        (work / "spool.jsonl").unlink(missing_ok=True)
        r = audit_count_run("postgresql", pg.url, work, env, images, args.requests, pg=pg)
        emit(
            {
                "check": f"audit records == answered requests ({args.requests}, PostgreSQL stopped and restarted "
                f"mid-run)",
                **r,
            }
        )
    finally:
        pg.stop("immediate")
        pg.remove()


if __name__ == "__main__":
    main()
