#!/usr/bin/env python
"""Why inner-product manipulation breaks Bulyan on non-IID clients and not on IID ones: one round, dissected.

The FL matrix (``fl_eval.py``) measured Bulyan falling from 88.1 % to 23.8 % under IPM with 20 Dirichlet(0.5)
clients, and losing only 5.9 points with 20 IID ones. This script replays round 1 of those cells outside Flower's
engine with the same pieces: the benign clients' real updates (``client_update``, the FL recipe), IPM's crafted
updates (``craft_update_attack("ipm")``, the first ``f`` clients as in the simulation), and Flower's own Bulyan
steps (``select_multikrum`` for the theta = n - 2f selection, the coordinate-wise median and
``aggregate_n_closest_weights`` over beta = theta - 2f). It reports where the malicious updates rank by Krum score,
how many Bulyan selects, in what share of coordinates the aggregate *is* the malicious value, and the cosine of
the aggregate with the benign mean.

    OMP_NUM_THREADS=1 python benchmarks/fl_bulyan_ipm.py --out docs/bench-fl-bulyan-2026-12-05.jsonl
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, RecordDict
from flwr.serverapp.strategy.bulyan import aggregate_n_closest_weights
from flwr.serverapp.strategy.multikrum import select_multikrum

from _machine import machine
from bastion.federated.attacks import craft_update_attack
from bastion.federated.local import client_update, initial_module
from bastion.federated.spec import FLSpec


def _flat(state: Any) -> np.ndarray:
    return np.concatenate([v.detach().numpy().ravel().astype(np.float64) for v in state.values()])


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def dissect(alpha: float | None, epsilon: float, clients: int, seed: int) -> dict[str, Any]:
    spec = FLSpec(clients=clients, malicious=0.2, attack="ipm", aggregator="bulyan", alpha=alpha, seed=seed)
    start = initial_module(spec).state_dict()
    g, f = _flat(start), spec.n_malicious
    benign = np.stack(
        [_flat(s) - g for s, _, bad in (client_update(spec, p, start, 1) for p in range(clients)) if not bad]
    )
    crafted = craft_update_attack("ipm", epsilon=epsilon).craft(benign, f, np.random.default_rng(seed))
    updates = np.concatenate([crafted, benign])  # the first f clients are the malicious ones, as in simulate()
    n = len(updates)
    theta, beta = n - 2 * f, n - 4 * f
    contents = [RecordDict({"arrays": ArrayRecord([(g + u).astype(np.float32)[None]])}) for u in updates]
    chosen = select_multikrum(contents, f, theta)
    picked = [next(i for i, c in enumerate(contents) if c is s) for s in chosen]
    sel = updates[picked]  # in Flower's order (the order decides ties in the beta-closest step)
    median = np.median(sel, axis=0)
    agg = aggregate_n_closest_weights([median[None]], [[s[None]] for s in sel], beta)[0][0]
    d2 = ((updates[:, None, :] - updates[None, :, :]) ** 2).sum(-1)
    scores = np.sort(d2, axis=1)[:, 1 : n - f - 1].sum(1)  # Krum: the n - f - 2 nearest others
    q1, q3 = np.percentile(benign, [25, 75], axis=0)
    mean = benign.mean(0)
    return {
        "alpha": alpha,
        "epsilon": epsilon,
        "clients": n,
        "malicious": f,
        "theta": theta,
        "beta": beta,
        "krum_rank_of_malicious": int((scores < scores[0]).sum()),
        "malicious_selected": sum(i < f for i in picked),
        "share_coordinates_aggregate_is_malicious": float(np.isclose(agg, crafted[0], atol=1e-7).mean()),
        "share_coordinates_ipm_inside_benign_iqr": float(((crafted[0] >= q1) & (crafted[0] <= q3)).mean()),
        "cos_aggregate_benign_mean": _cos(agg, mean),
        "norm_aggregate_over_benign_mean": float(np.linalg.norm(agg) / np.linalg.norm(mean)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--epsilons", default="0.5", help="IPM scales, comma-separated (0.5: the matrix's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="append one JSON line per case here")
    args = ap.parse_args()
    for alpha in (None, 0.5):
        for eps in (float(e) for e in args.epsilons.split(",")):
            row = {"machine": machine(), **dissect(alpha, eps, args.clients, args.seed)}
            print(json.dumps({k: v for k, v in row.items() if k != "machine"}))
            if args.out:
                with open(args.out, "a") as fh:
                    fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
