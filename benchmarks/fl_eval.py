#!/usr/bin/env python
"""Federated learning under attack on Flower's simulation engine: the recipe, and attacks against aggregators.

Sections (``--only`` picks some, in this order; one JSON line per federated run, appended to ``--out`` as soon as
the run ends, each with the machine and the run's full spec):

- ``recipe``: attack-free FedAvg on ``mnist5k`` (IID): 20 clients x 10 rounds and 10 clients x 5 rounds
  (targets >= 93 % and >= 88 %).
- ``iid``: 20 clients, 20 % malicious, IID: attacks ``none, sign-flip, gaussian, backdoor`` against
  ``fedavg, median, trimmed-mean, krum, fltrust, norm-clip``. Targets: FedAvg >= 30 points below its attack-free
  run under sign flipping and Gaussian updates while median, trimmed mean, Krum and FLTrust stay within 5 of
  theirs; model replacement >= 90 % backdoor ASR on FedAvg, < 20 % under norm clipping and FLTrust with clean
  accuracy within 3 points.
- ``noniid`` (20 clients) and ``noniid50`` (50 clients): Dirichlet(0.5) over labels, 20 % malicious: the
  omniscient attacks ``none, alie, ipm, min-max, min-sum`` against ``fedavg, median, trimmed-mean, krum, fltrust``.
- ``backdoor``: model replacement (from round ``rounds // 2 + 1``, boost clients / malicious; the attacker's own
  recipe: lr / 5, 5 x the epochs, stamped copies of half its records; top-left trigger), IID, against every
  aggregator (also in ``iid``; this section alone reruns it).
- ``rest``: the remaining cells of the matrix (``label-flip`` and the omniscient attacks on IID data, and
  ``multi-krum``, ``bulyan``, ``norm-clip`` on non-IID data), when there is time.
- ``full``: every attack against every aggregator, IID and Dirichlet(0.5) with 20 clients, and the omniscient
  attacks against every aggregator with 50 (with ``--resume``: the cells no other section ran).

Every run: mnist-cnn, 10 rounds, the clients' recipe of ``bastion.federated.FL_RECIPES`` (2 local epochs of SGD,
lr 0.05, momentum 0.9, batch 32), seed 0; all clients train every round.

    OMP_NUM_THREADS=1 python benchmarks/fl_eval.py --out docs/bench-fl-2026-12-05.jsonl
    python benchmarks/fl_eval.py --only recipe --out /tmp/fl.jsonl
    OMP_NUM_THREADS=1 python benchmarks/fl_eval.py --only noniid50,rest --resume --out docs/bench-fl-2026-12-05.jsonl
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from typing import Any

import flwr
import torch

from bastion.federated import FLSpec
from bastion.federated.simulate import simulate

AGGS = ["fedavg", "median", "trimmed-mean", "krum", "fltrust"]
ALL_AGGS = [*AGGS, "multi-krum", "bulyan", "norm-clip"]
OMNISCIENT = ["none", "alie", "ipm", "min-max", "min-sum"]
ATTACKS = ["none", "sign-flip", "gaussian", "label-flip", "backdoor", "alie", "ipm", "min-max", "min-sum"]


def _sections(rounds: int) -> dict[str, list[FLSpec]]:
    iid = FLSpec(clients=20, malicious=0.2, rounds=rounds)
    noniid = iid.replace(alpha=0.5)
    return {
        "recipe": [FLSpec(clients=20, rounds=10), FLSpec(clients=10, rounds=5)],
        "iid": [
            iid.replace(attack=a, aggregator=g)
            for a in ["none", "sign-flip", "gaussian", "backdoor"]
            for g in [*AGGS, "norm-clip"]
        ],
        "noniid": [noniid.replace(attack=a, aggregator=g) for a in OMNISCIENT for g in AGGS],
        "noniid50": [noniid.replace(clients=50, attack=a, aggregator=g) for a in OMNISCIENT for g in AGGS],
        "backdoor": [
            iid.replace(attack="backdoor", aggregator=g) for g in [*AGGS, "norm-clip", "multi-krum", "bulyan"]
        ],
        "rest": [
            iid.replace(attack=a, aggregator=g)
            for a in ["label-flip", "alie", "ipm", "min-max", "min-sum"]
            for g in AGGS
        ]
        + [
            iid.replace(attack=a, aggregator=g)
            for a in ["none", "sign-flip", "gaussian", "backdoor"]
            for g in ["multi-krum", "bulyan"]
        ]
        + [noniid.replace(attack=a, aggregator=g) for a in OMNISCIENT for g in ["multi-krum", "bulyan", "norm-clip"]],
        "full": [split.replace(attack=a, aggregator=g) for split in (iid, noniid) for a in ATTACKS for g in ALL_AGGS]
        + [noniid.replace(clients=50, attack=a, aggregator=g) for a in OMNISCIENT for g in ALL_AGGS],
    }


def _machine() -> dict[str, Any]:
    return {
        "processor": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "flwr": flwr.__version__,
        "date": datetime.date.today().isoformat(),
    }


def _done(out: str) -> set[str]:
    """The specs (as canonical JSON) that ``out`` already has a result for; superseded sections do not count."""
    if not os.path.exists(out):
        return set()
    with open(out) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return {FLSpec.from_dict(d["spec"]).to_json() for d in lines if "superseded" not in d.get("section", "")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="recipe,iid,noniid,noniid50,rest", help="comma-separated sections, in order")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--out", default=None, help="append JSON lines here")
    ap.add_argument(
        "--resume", action="store_true", help="skip the runs whose spec already has a line in --out (any section)"
    )
    args = ap.parse_args()
    machine = _machine()
    sections = _sections(args.rounds)
    done = _done(args.out) if args.resume and args.out else set()

    def emit(section: str) -> Any:
        def write(result: dict[str, Any]) -> None:
            s = result["spec"]
            line = {"section": section, "machine": machine, **result}
            print(
                f"{section:7} {s['clients']:>3}c alpha={s['alpha']} {s['attack']:>10} x {s['aggregator']:<13} "
                f"acc {result['final_accuracy']:.4f} asr {result.get('backdoor_asr', '-')} ({result['seconds']:.0f} s)",
                flush=True,
            )
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(line) + "\n")

        return write

    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        todo = [spec for spec in sections[name] if spec.to_json() not in done]
        print(f"# section {name}: {len(todo)} of {len(sections[name])} runs to do", flush=True)
        t0 = time.perf_counter()
        simulate(todo, workers=args.workers, on_result=emit(name))
        print(f"# section {name}: {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
