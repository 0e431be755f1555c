#!/usr/bin/env python
"""Differential privacy: DP-SGD's utility cost, bastion's overhead over a bare Opacus loop, and the canary audit.

Sections (``--only`` picks some; one JSON line per measurement, appended to ``--out`` as it is measured, each with
the machine: processor, cores, torch threads, torch and Opacus versions, date):

- ``accuracy``: test accuracy of DP-SGD (the architecture's DP recipe, ``dp_config_for``; delta 1e-5) at epsilon
  1, 3 and 8, beside the non-private baseline (the standard recipe, ``train_architecture``); for each DP run the
  epsilon the accountant says was spent, the noise multiplier, the sampling rate and the seconds.
- ``overhead``: ``dp_train_architecture`` at epsilon 3 against the textbook Opacus loop with the same initial
  weights, data, optimizer, learning rate, expected batch size, clipping norm and epochs
  (``PrivacyEngine(accountant="prv").make_private_with_epsilon`` on a ``DataLoader``, then zero_grad /
  cross-entropy / backward / step over its Poisson loader, ``get_epsilon`` at the end). Both are timed end to end
  (model, noise search, training, final epsilon), alternately, ``--repeats`` times each; the ratio is of the
  medians (the target: bastion within 1.2x).
- ``audit``: ``canary_audit`` with ``--canaries`` out-of-distribution canaries (loss score, one run, confidence
  0.95) of the standard non-private recipe, DP at epsilon 8 and DP at epsilon 1: the claimed epsilon, the
  empirical lower bound, test accuracy, the membership attack's AUC and TPR at 0.1 % FPR on the canaries and on
  natural records.

``--epochs`` overrides the DP recipe's epochs; the non-private baseline and the audit's control keep the standard
recipe (``bastion.models.training.TRAIN_CONFIGS``).

    OMP_NUM_THREADS=1 python benchmarks/dp_eval.py --threads 1
    python benchmarks/dp_eval.py --only overhead --repeats 1 --out /tmp/dp.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from dataclasses import asdict, replace
from typing import Any

import opacus
import torch
import torch.nn.functional as F
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

from _machine import machine as _machine
from bastion.data import load_dataset
from bastion.defenses.privacy.audit import canary_audit
from bastion.defenses.privacy.dpsgd import DPConfig, dp_config_for, dp_train_architecture
from bastion.models.architectures import build_architecture
from bastion.models.training import TRAIN_CONFIGS, TrainConfig, train_architecture
from bastion.training import accuracy

warnings.filterwarnings("ignore")
EPSILONS = (1.0, 3.0, 8.0)
DELTA = 1e-5
OUT_PATH: str | None = None
MACHINE: dict[str, Any] = {}


def machine() -> dict[str, Any]:
    return _machine(opacus=str(opacus.__version__))


def emit(obj: dict[str, Any]) -> None:
    """Print a measurement and append it to ``--out`` at once (a long run keeps what it measured)."""
    line = json.dumps({**obj, "machine": {**MACHINE, "date": machine()["date"]}})
    print(line, flush=True)
    if OUT_PATH:
        with open(OUT_PATH, "a") as f:
            f.write(line + "\n")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1000 else f"{v:.1f}"
        return str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    print(f"\n== {title}", flush=True)
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    print(flush=True)


def _dp(arch: str, epochs: int | None, epsilon: float, seed: int) -> DPConfig:
    return dp_config_for(arch, epsilon=epsilon, delta=DELTA, epochs=epochs, seed=seed)


# -- accuracy -----------------------------------------------------------------------------------------------
def section_accuracy(arch: str, data: Any, epochs: int | None, seed: int) -> None:
    rows = []
    base_cfg = TRAIN_CONFIGS.get(arch, TrainConfig())
    log(f"accuracy: non-DP baseline ({base_cfg})")
    t0 = time.perf_counter()
    _, rec = train_architecture(arch, data, replace(base_cfg, seed=seed))
    seconds = time.perf_counter() - t0
    row = {
        "section": "accuracy",
        "arch": arch,
        "data": data.name,
        "defense": "none",
        "recipe": {k: rec[k] for k in ("epochs", "batch_size", "lr")},
        "epsilon_target": None,
        "epsilon": None,
        "test_accuracy": rec["test_accuracy"],
        "seconds": round(seconds, 2),
    }
    emit(row)
    rows.append(["none", None, None, None, None, rec["epochs"], row["test_accuracy"], row["seconds"]])
    for eps in EPSILONS:
        cfg = _dp(arch, epochs, eps, seed)
        log(f"accuracy: DP-SGD epsilon {eps:g} ({cfg})")
        t0 = time.perf_counter()
        trained = dp_train_architecture(arch, data.x_train, data.y_train, cfg)
        seconds = time.perf_counter() - t0
        r = trained.record
        row = {
            "section": "accuracy",
            "arch": arch,
            "data": data.name,
            "defense": "dp-sgd",
            "recipe": {k: getattr(cfg, k) for k in ("epochs", "batch_size", "lr", "optimizer", "max_grad_norm")},
            "epsilon_target": eps,
            "delta": DELTA,
            "epsilon": r["epsilon"],
            "noise_multiplier": r["noise_multiplier"],
            "sample_rate": r["sample_rate"],
            "steps": r["steps"],
            "accountant": r["accountant"],
            "test_accuracy": accuracy(trained.module, data.x_test, data.y_test),
            "seconds": round(seconds, 2),
        }
        emit(row)
        rows.append(
            [
                "dp-sgd",
                eps,
                r["epsilon"],
                r["noise_multiplier"],
                r["sample_rate"],
                cfg.epochs,
                row["test_accuracy"],
                row["seconds"],
            ]
        )
    table(
        f"accuracy ({arch} on {data.name}, delta {DELTA:g})",
        ["defense", "eps_target", "eps_spent", "sigma", "q", "epochs", "test_acc", "seconds"],
        rows,
    )


# -- overhead -----------------------------------------------------------------------------------------------
def bare_opacus(arch: str, x: torch.Tensor, y: torch.Tensor, cfg: DPConfig, x_test, y_test) -> dict[str, Any]:
    """The textbook Opacus loop for ``cfg`` (same initial weights as bastion's), timed end to end."""
    assert cfg.epsilon is not None
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        module, _ = build_architecture(arch)
    torch.manual_seed(cfg.seed)  # Poisson sampling and noise draw from the global generator
    optimizer = (
        torch.optim.Adam(module.parameters(), lr=cfg.lr)
        if cfg.optimizer == "adam"
        else torch.optim.SGD(module.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    )
    engine = PrivacyEngine(accountant="prv")
    model, optimizer, loader = engine.make_private_with_epsilon(
        module=module,
        optimizer=optimizer,
        data_loader=DataLoader(TensorDataset(x, y), batch_size=cfg.batch_size),
        target_epsilon=cfg.epsilon,
        target_delta=cfg.delta,
        epochs=cfg.epochs,
        max_grad_norm=cfg.max_grad_norm,
    )
    t_private = time.perf_counter() - t0
    model.train()
    for _ in range(cfg.epochs):
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
    epsilon = float(engine.get_epsilon(cfg.delta))
    seconds = time.perf_counter() - t0
    return {
        "library": "opacus (bare loop)",
        "seconds": round(seconds, 2),
        "make_private_seconds": round(t_private, 2),
        "test_accuracy": accuracy(model._module, x_test, y_test),
        "epsilon": epsilon,
        "noise_multiplier": float(optimizer.noise_multiplier),
        "sample_rate": float(loader.sample_rate),
        "steps": sum(int(h[2]) for h in engine.accountant.history),
    }


def bastion_dp(arch: str, x: torch.Tensor, y: torch.Tensor, cfg: DPConfig, x_test, y_test) -> dict[str, Any]:
    t0 = time.perf_counter()
    trained = dp_train_architecture(arch, x, y, cfg)
    seconds = time.perf_counter() - t0
    r = trained.record
    return {
        "library": "bastion",
        "seconds": round(seconds, 2),
        "train_seconds": r["seconds"],
        "test_accuracy": accuracy(trained.module, x_test, y_test),
        "epsilon": r["epsilon"],
        "noise_multiplier": r["noise_multiplier"],
        "sample_rate": r["sample_rate"],
        "steps": r["steps"],
    }


def section_overhead(arch: str, data: Any, epochs: int | None, seed: int, repeats: int) -> None:
    cfg = _dp(arch, epochs, 3.0, seed)
    x, y, xt, yt = data.x_train, data.y_train, data.x_test, data.y_test
    runners = {"bastion": bastion_dp, "opacus": bare_opacus}
    results: dict[str, list[dict[str, Any]]] = {"bastion": [], "opacus": []}
    rows = []
    for rep in range(repeats):
        order = ["bastion", "opacus"] if rep % 2 == 0 else ["opacus", "bastion"]
        for name in order:
            log(f"overhead: repetition {rep + 1}/{repeats}, {name} ({cfg})")
            r = runners[name](arch, x, y, cfg, xt, yt)
            results[name].append(r)
            emit({"section": "overhead", "arch": arch, "data": data.name, "repetition": rep + 1, **r})
            rows.append([name, rep + 1, r["seconds"], r["test_accuracy"], r["epsilon"], r["noise_multiplier"]])
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in results.items()}
    ratio = med["bastion"] / med["opacus"]
    emit(
        {
            "section": "overhead",
            "arch": arch,
            "data": data.name,
            "summary": True,
            "recipe": {
                k: getattr(cfg, k)
                for k in ("epsilon", "delta", "epochs", "batch_size", "lr", "optimizer", "max_grad_norm")
            },
            "repeats": repeats,
            "median_seconds": {k: round(v, 2) for k, v in med.items()},
            "ratio_bastion_over_opacus": round(ratio, 3),
            "within_1.2x": ratio <= 1.2,
            "test_accuracy": {k: [r["test_accuracy"] for r in v] for k, v in results.items()},
            "epsilon": {k: [r["epsilon"] for r in v] for k, v in results.items()},
        }
    )
    table(
        f"overhead ({arch} on {data.name}, epsilon 3, {cfg.epochs} epochs; "
        f"median bastion {med['bastion']:.1f} s / opacus {med['opacus']:.1f} s = {ratio:.3f}x)",
        ["library", "rep", "seconds", "test_acc", "eps_spent", "sigma"],
        rows,
    )


# -- audit --------------------------------------------------------------------------------------------------
def section_audit(arch: str, data: Any, epochs: int | None, seed: int, canaries: int) -> None:
    rows = []
    for label, cfg in (
        ("none", None),
        ("dp eps=8", _dp(arch, epochs, 8.0, seed)),
        ("dp eps=1", _dp(arch, epochs, 1.0, seed)),
    ):
        log(f"audit: {label} with {canaries} ood canaries")
        res = canary_audit(
            arch, data, cfg, canaries=canaries, kind="ood", score="loss", runs=1, confidence=0.95, seed=seed
        )
        mem = res["membership"]
        row = {
            "section": "audit",
            "arch": arch,
            "data": data.name,
            "setting": label,
            "epsilon_target": res["epsilon_target"],
            "epsilon": res["epsilon"],
            "delta": res["delta"],
            "epsilon_lower_bound": res["epsilon_lower_bound"],
            "confidence": res["confidence"],
            "violation": res["violation"],
            "test_accuracy": res["test_accuracy"],
            "canaries": res["canaries"],
            "membership": mem,
            "one_run": res["one_run"],
            "training": res["training"],
            "seconds": res["seconds"],
        }
        emit(row)
        c, n = mem["canaries"], mem["natural"]
        rows.append(
            [
                label,
                res["epsilon"],
                res["epsilon_lower_bound"],
                res["test_accuracy"],
                c["auc"],
                c["tpr_at_fpr"]["0.001"],
                n["auc"],
                n["tpr_at_fpr"]["0.001"],
                res["seconds"],
            ]
        )
    table(
        f"audit ({arch} on {data.name}, {canaries} ood canaries, loss score, 1 run, confidence 0.95)",
        ["setting", "eps_claim", "eps_lb", "test_acc", "can_auc", "can_tpr@.1%", "nat_auc", "nat_tpr@.1%", "seconds"],
        rows,
    )


def main() -> None:
    global OUT_PATH, MACHINE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="accuracy,overhead,audit")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="docs/bench-dp-2026-12-04.jsonl", help="append the JSON lines to this file")
    ap.add_argument("--arch", default="mnist-cnn")
    ap.add_argument("--data", default="mnist5k")
    ap.add_argument("--epochs", type=int, default=None, help="the DP recipe's epochs (default: the recipe's)")
    ap.add_argument("--canaries", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=2, help="overhead: runs of each loop")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    OUT_PATH, MACHINE = args.out or None, machine()
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - {"accuracy", "overhead", "audit"}
    if unknown:
        ap.error(f"--only: unknown sections {', '.join(sorted(unknown))}")
    data = load_dataset(args.data)
    start = time.perf_counter()
    emit(
        {
            "setting": "dp-eval",
            "arch": args.arch,
            "data": args.data,
            "train": int(data.x_train.shape[0]),
            "test": int(data.x_test.shape[0]),
            "sections": sorted(only),
            "dp_recipe": asdict(dp_config_for(args.arch, epochs=args.epochs)),
            "standard_recipe": asdict(TRAIN_CONFIGS.get(args.arch, TrainConfig())),
            "seed": args.seed,
        }
    )
    if "accuracy" in only:
        section_accuracy(args.arch, data, args.epochs, args.seed)
    if "overhead" in only:
        section_overhead(args.arch, data, args.epochs, args.seed, args.repeats)
    if "audit" in only:
        section_audit(args.arch, data, args.epochs, args.seed, args.canaries)
    total = time.perf_counter() - start
    emit({"setting": "dp-eval", "done": sorted(only), "total_seconds": round(total, 1)})
    print(f"total {total / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
