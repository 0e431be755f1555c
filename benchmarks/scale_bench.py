"""Scale-out on Ray (issue 19): the same work without Ray, on a local Ray of 1 worker and of 2, side by side in one
run; the results must be identical, the times are compared as ratios.

- ``certify``: Cohen's CERTIFY of the first --cert-n mnist5k test images (sigma 0.25, n0 100, n --cert-samples) on
  zoo:mnist-cnn fine-tuned with Gaussian noise (``train_with_noise``, 2 epochs, seed 0: what ``bastion harden
  --defense gaussian`` does), through :func:`bastion.scale.certify_sharded`.
- ``audit``: ``run_audit`` with the ``standard`` profile's budgets on --audit-n inputs of zoo:mnist-cnn, the probes
  that shard (--audit-probes: model, whitebox, minimum-norm, blackbox, noise by default).

Modes: no Ray (torch on its default threads), a local Ray of 1 worker (the cores shared out: 2 threads here; and 1
worker of 1 CPU, a cluster's unit) and of 2 workers (1 thread each), each run --rounds times in mirrored order. Times include Ray's start-up and
stop (what a user waits for). Each line of --out is one JSON record; the last is
the summary with the speed-ups and the overheads. Run on an idle machine::

    .venv/bin/python benchmarks/scale_bench.py --out docs/bench-scale-2026-12-05.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import bastion
from _machine import machine
from bastion.audit import run_audit
from bastion.data import load_dataset
from bastion.defenses.certification import ABSTAIN, SmoothedClassifier, train_with_noise
from bastion.models.zoo import load_zoo
from bastion.scale import certify_sharded, make_executor
from bastion.scale.ray_backend import RayExecutor

# (name, Ray workers or None for no Ray, torch threads per worker or in this process; None: the default, which
# for a local Ray shares the cores out between the workers)
Mode = tuple[str, int | None, int | None]
CERTIFY_MODES: list[Mode] = [
    ("no-ray", None, None),
    ("ray-1", 1, None),
    ("ray-1-worker-1-thread", 1, 1),
    ("ray-2", 2, None),
]
AUDIT_MODES: list[Mode] = [("no-ray", None, None), ("ray-1", 1, None), ("ray-2", 2, None)]


def _timed(mode: Mode, work: Any) -> tuple[Any, float, dict[str, Any]]:
    _, workers, threads = mode
    default_threads = torch.get_num_threads()
    t0 = time.perf_counter()
    if workers is None:
        torch.set_num_threads(threads or default_threads)
        ex = make_executor()
    else:
        ex = RayExecutor(workers=workers, threads=threads)
    try:
        out = work(ex)
    finally:
        ex.close()
        torch.set_num_threads(default_threads)
    return out, time.perf_counter() - t0, ex.describe()


def _schedule(modes: list[Mode], rounds: int) -> list[tuple[int, Mode]]:
    """Every mode once a round, the order reversed every other round (A B C, C B A, ...): this machine's speed
    drifts by up to 2x over minutes (a fixed torch loop measured 0.9k-1.8k batches per 10 s), so a ratio is only
    fair between runs made close together, and mirrored rounds cancel a steady drift."""
    return [(r, m) for r in range(rounds) for m in (modes if r % 2 == 0 else modes[::-1])]


def bench_certify(args: argparse.Namespace, emit: Any) -> dict[str, float]:
    data = load_dataset("mnist5k")
    zoo = load_zoo("mnist-cnn")
    module = train_with_noise(copy.deepcopy(zoo.module), data.x_train, data.y_train, 0.25, epochs=2, seed=0)
    base = bastion.TorchClassifier(module, n_classes=10, input_shape=(1, 28, 28), output="logits")
    x, y = data.x_test[: args.cert_n], data.y_test[: args.cert_n]
    times: dict[str, list[float]] = {}
    first = None
    for rnd, mode in _schedule(CERTIFY_MODES, args.rounds):
        name = mode[0]
        model = SmoothedClassifier(base, 0.25, n0=100, n=args.cert_samples, alpha=0.001, seed=0)
        (labels, radii, counts), seconds, scale = _timed(mode, lambda ex, m=model: certify_sharded(m, x, executor=ex))
        same = first is None or all(torch.equal(a, b) for a, b in zip(first, (labels, radii, counts)))
        first = first or (labels, radii, counts)
        times.setdefault(name, []).append(seconds)
        correct = labels == y
        emit(
            {
                "part": "certify",
                "mode": name,
                "round": rnd,
                "seconds": round(seconds, 2),
                "identical_to_no_ray": same,
                "inputs": int(x.shape[0]),
                "n": args.cert_samples,
                "certified_accuracy@0.5": float((correct & (radii >= 0.5)).double().mean()),
                "abstained": float((labels == ABSTAIN).double().mean()),
                "shard_seconds_total": round(sum(scale["maps"][0]["shard_seconds"]), 2),
                "scale": {k: v for k, v in scale.items() if k != "maps"},
            }
        )
    return times


def _comparable(report: dict[str, Any]) -> str:
    probes = [{k: v for k, v in p.items() if k != "seconds"} for p in report["probes"]]
    keep = {k: report[k] for k in ("settings", "metrics", "checks", "verdict")}
    return json.dumps({**keep, "probes": probes}, sort_keys=True, default=str)


def bench_audit(args: argparse.Namespace, emit: Any) -> dict[str, float]:
    data = load_dataset("mnist5k")
    model = load_zoo("mnist-cnn")
    probes = args.audit_probes.split(",")
    times: dict[str, list[float]] = {}
    first = None
    modes = [m for m in AUDIT_MODES if m[0] in args.audit_modes.split(",")]
    for rnd, mode in _schedule(modes, args.rounds):
        name = mode[0]
        out = Path(tempfile.mkdtemp(prefix="scale-audit-")) / "report"
        kw: dict[str, Any] = dict(profile="standard", n=args.audit_n, probes=probes, write=False)
        report, seconds, scale = _timed(mode, lambda ex, o=out, k=kw: run_audit(model, data, o, executor=ex, **k))
        shutil.rmtree(out.parent, ignore_errors=True)
        same = first is None or _comparable(report) == first  # to the first mode run (no Ray when it runs)
        first = first or _comparable(report)
        times.setdefault(name, []).append(seconds)
        emit(
            {
                "part": "audit",
                "mode": name,
                "round": rnd,
                "seconds": round(seconds, 2),
                "identical_to_no_ray": same,
                "inputs": args.audit_n,
                "probes": {p["probe"]: p["seconds"] for p in report["probes"]},
                "robust_accuracy@eps=0.3": report["metrics"].get("robust_accuracy@eps=0.3"),
                "shards": sum(m["shards"] for m in scale["maps"]),
                "scale": {k: v for k, v in scale.items() if k != "maps"},
            }
        )
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="certify,audit")
    ap.add_argument("--rounds", type=int, default=2, help="Runs of every mode, in mirrored order.")
    ap.add_argument("--cert-n", type=int, default=200)
    ap.add_argument("--cert-samples", type=int, default=10_000)
    ap.add_argument("--audit-n", type=int, default=1000)
    ap.add_argument("--audit-probes", default="model,whitebox,minimum-norm,blackbox,noise")
    ap.add_argument("--audit-modes", default="no-ray,ray-1,ray-2", help="A subset of no-ray, ray-1, ray-2.")
    ap.add_argument("--out", default=None, help="Append the JSON lines to this file too.")
    args = ap.parse_args()
    sink = open(args.out, "a", encoding="utf-8") if args.out else None

    def emit(record: dict[str, Any]) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        if sink is not None:
            sink.write(line + "\n")
            sink.flush()

    import ray

    emit({"machine": machine(ray=ray.__version__, bastion=bastion.__version__)})
    summary: dict[str, Any] = {"summary": True}
    for part in args.parts.split(","):
        runs = (bench_certify if part == "certify" else bench_audit)(args, emit)
        times = {k: sum(v) / len(v) for k, v in runs.items()}
        summary[part] = {"mean_seconds": {k: round(v, 2) for k, v in times.items()}}
        for key, (a, b) in {
            "speedup_2_vs_1_workers": ("ray-1", "ray-2"),
            "speedup_2_workers_vs_no_ray": ("no-ray", "ray-2"),
            "overhead_1_worker_vs_no_ray": ("ray-1", "no-ray"),
        }.items():
            if a in times and b in times:
                summary[part][key] = round(times[a] / times[b], 3)
        if "ray-1-worker-1-thread" in times:  # one CPU per worker, the unit of a cluster
            summary[part]["speedup_2_vs_1_one_cpu_workers"] = round(times["ray-1-worker-1-thread"] / times["ray-2"], 3)

    emit(summary)


if __name__ == "__main__":
    main()
