#!/usr/bin/env python
"""Neural Cleanse (Wang et al. 2019) on mnist-cnn: a BadNets-backdoored model, the clean zoo model, a Blended one.

The backdoored models are the test suite's: mnist-cnn trained with the zoo's recipe on mnist5k poisoned at 5 %
(BadNets: 3x3 checkerboard at the bottom right, target 0 — ``tests/poison_helpers.py:badnets_mnist``;
Blended: uniform-noise key at alpha 0.2, target 0), cached under ``$BASTION_HOME/test-models``. The scan sees
only the first ``--n`` mnist5k test images (clean, with labels); the reversed trigger of every flagged class
and of the true target is then stamped (``ScanResult.as_trigger(k).apply``) on the *other* test images
(``[n:]``) not of that class, and its success rate there is reported (``heldout_asr``).

Prints one JSON line per model — per-class norms, anomaly indices, the flagged classes, each trigger's success
on the scan's inputs, steps per class, seconds, model queries (forward passes of one image: the machine-free
cost), and the model's forward+backward throughput measured just before the scan (img/s at the scan's batch of
classes x batch_size: how loaded the machine was) — then a summary line with issue 13's targets: index > 2
for the BadNets target, < 2 for every class of the clean model, the flagged trigger's held-out success >= 0.9,
and every 10-class scan under 180 s.

    python benchmarks/neural_cleanse.py                       # badnets + clean, 500 scan images
    python benchmarks/neural_cleanse.py --models badnets,clean,blended --n 1000 --out nc.jsonl --png nc-png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # poison_helpers: the test suite's cached poisoned models

from bastion.attacks.poisoning import Blended, evaluate_poisoning  # noqa: E402
from bastion.data import load_dataset  # noqa: E402
from bastion.defenses.sanitization import NeuralCleanse, ScanResult  # noqa: E402
from bastion.models.zoo import load_zoo  # noqa: E402


def emit(obj: dict[str, Any], out: Any) -> None:
    line = json.dumps(obj)
    print(line, flush=True)
    if out is not None:
        out.write(line + "\n")
        out.flush()


def throughput(model: Any, batch: int, seconds: float = 3.0) -> float:
    """Forward+backward (w.r.t. the input) images per second at ``batch`` images per pass."""
    x = torch.rand(batch, *model.input_shape, requires_grad=True)
    model.logits(x).logsumexp(1).sum().backward()
    t, n = time.perf_counter(), 0
    while time.perf_counter() - t < seconds:
        x.grad = None
        model.logits(x).logsumexp(1).sum().backward()
        n += batch
    return n / (time.perf_counter() - t)


def load_models(names: list[str], mnist: Any) -> dict[str, tuple[Any, int | None, dict[str, float]]]:
    from poison_helpers import badnets_mnist, train_cached

    out: dict[str, tuple[Any, int | None, dict[str, float]]] = {}
    for name in names:
        if name == "badnets":
            poisoned, model = badnets_mnist(mnist)
        elif name == "blended":
            poisoned = Blended(rate=0.05, target=0, alpha=0.2, seed=0).poison(mnist)
            model = train_cached(poisoned.data, "mnist-cnn")
        elif name == "clean":
            model = load_zoo("mnist-cnn")
            out[name] = (model, None, {})
            continue
        else:
            raise SystemExit(f"unknown model {name!r}: choose among badnets, clean, blended")
        out[name] = (model, poisoned.target, evaluate_poisoning(model.predict, poisoned))
    return out


def heldout_asr(result: ScanResult, cls: int, x: torch.Tensor, y: torch.Tensor, model: Any) -> float:
    keep = y != cls
    stamped = result.as_trigger(cls).apply(x[keep])
    return round(float((model.predict(stamped) == cls).double().mean()), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500, help="clean mnist5k test images the scan sees (the first n)")
    ap.add_argument("--models", default="badnets,clean", help="comma-separated: badnets, clean, blended")
    ap.add_argument("--steps", type=int, default=None, help="NeuralCleanse steps (default: the class default)")
    ap.add_argument("--batches-per-step", type=int, default=None)
    ap.add_argument("--reset-cost-to-zero", action="store_true", help="the reference's full-optimisation start")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write the JSON lines to this file")
    ap.add_argument("--png", default=None, help="write each model's reversed triggers as PNGs under this folder")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mnist = load_dataset("mnist5k")
    if not 20 <= args.n < mnist.x_test.shape[0]:
        raise SystemExit(f"--n must lie in [20, {mnist.x_test.shape[0] - 1}] (the rest is the held-out set)")
    kw: dict[str, Any] = {"seed": args.seed, "reset_cost_to_zero": args.reset_cost_to_zero}
    if args.steps is not None:
        kw["steps"] = args.steps
    if args.batches_per_step is not None:
        kw["batches_per_step"] = args.batches_per_step
    scanner = NeuralCleanse(**kw)
    x, y = mnist.x_test[: args.n], mnist.y_test[: args.n]
    x_held, y_held = mnist.x_test[args.n :], mnist.y_test[args.n :]
    out = open(args.out, "w", encoding="utf-8") if args.out else None
    summary: dict[str, Any] = {"summary": True, "n_scan_inputs": args.n, "scanner": repr(scanner)}
    for name, (model, target, poison_eval) in load_models(args.models.split(","), mnist).items():
        load_before = os.getloadavg()[0]
        img_s = throughput(model, 10 * scanner.batch_size)
        model.n_queries = 0
        result = scanner.scan(model, x, y)
        d = result.to_dict()
        d.pop("config")
        check = sorted({*result.flagged, *([] if target is None else [target])})
        row = {
            "model": name,
            "target": target,
            **{k: round(v, 4) for k, v in poison_eval.items()},
            **d,
            "heldout_asr": {str(k): heldout_asr(result, k, x_held, y_held, model) for k in check},
            "queries": model.n_queries,
            "img_per_s_fwd_bwd": round(img_s, 1),
            "loadavg_1min_before": round(load_before, 2),
            "loadavg_1min_after": round(os.getloadavg()[0], 2),
        }
        emit(row, out)
        if args.png:
            result.save_triggers(Path(args.png) / name)
        idx = dict(zip(result.classes, result.anomaly_index))
        summary[name] = {
            "flagged": result.flagged,
            "max_index": round(max(result.anomaly_index), 4),
            "target_index": None if target is None else round(idx[target], 4),
            "target_flagged": None if target is None else target in result.flagged,
            "flagged_heldout_asr": {k: row["heldout_asr"][str(k)] for k in result.flagged},
            "seconds": round(result.seconds, 1),
            "under_180s": result.seconds < 180,
        }
    emit(summary, out)
    if out is not None:
        out.close()


if __name__ == "__main__":
    main()
