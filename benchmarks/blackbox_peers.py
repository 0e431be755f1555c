#!/usr/bin/env python
"""Score-based black-box benchmark: bastion's Square attack vs ART's SquareAttack, and the
random-noise floor, on zoo:mnist-cnn, the first --n mnist5k test images, Linf eps=0.3, at most
--max-queries queries per image.

Prints one JSON line per library ({"library", "attack", "n", "seconds", "robust_accuracy",
"mean_queries_successful", "forward_samples"}) and then the ratios the project tracks, with their
targets. bastion's per-image queries come from ``extra["queries"]``; ART's are not recorded, so
both libraries' forward samples are counted at the module ("forward_samples": every input passed
through the network, the clean predictions ART makes included).

    python benchmarks/blackbox_peers.py --n 1000
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch
from torch import nn

from bastion.attacks.evasion.noise import RandomNoise
from bastion.attacks.evasion.square import Square
from bastion.data import load_dataset
from bastion.models.torch import TorchClassifier
from bastion.models.zoo import load_zoo

warnings.filterwarnings("ignore")


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


class Counting(nn.Module):
    """Counts every input sample passed through the wrapped module."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.samples = inner, 0

    def forward(self, x):
        self.samples += int(x.shape[0])
        return self.inner(x)


def accuracy(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((module(x).argmax(1) == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--max-queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-art", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    zoo = load_zoo("mnist-cnn")
    data = load_dataset("mnist5k")
    x, y = data.x_test[: args.n], data.y_test[: args.n]
    module = zoo.module.eval()
    clean = accuracy(module, x, y)
    attack = f"square-linf-{args.eps}-q{args.max_queries}"
    rows: dict[str, dict] = {}

    def bastion_row(library: str, atk) -> None:
        counted = Counting(module)
        model = TorchClassifier(counted, n_classes=10, input_shape=(1, 28, 28), output="logits")
        t = time.perf_counter()
        r = atk(model, x, y)
        sec = time.perf_counter() - t
        ok = r.success & r.clean_correct
        q = r.extra["queries"]
        rows[library] = {
            "library": library,
            "attack": attack if library == "bastion" else f"noise-linf-{args.eps}",
            "n": args.n,
            "seconds": round(sec, 3),
            "clean_accuracy": round(clean, 4),
            "robust_accuracy": round(r.robust_accuracy, 4),
            "mean_queries_successful": round(float(q[ok].float().mean()), 2) if bool(ok.any()) else None,
            "median_queries_successful": float(q[ok].float().median()) if bool(ok.any()) else None,
            "max_queries_used": int(q.max()),
            "attack_queries": r.queries,
            "forward_samples": counted.samples,
            "linf_max": round(float(r.norms.max()), 6),
        }
        emit(rows[library])

    bastion_row("bastion", Square(eps=args.eps, norm="linf", max_queries=args.max_queries, p_init=0.8))
    bastion_row("noise", RandomNoise(eps=args.eps, norm="linf", max_queries=args.max_queries))

    if not args.skip_art:
        from art.attacks.evasion import SquareAttack
        from art.estimators.classification import PyTorchClassifier

        counted = Counting(module)
        est = PyTorchClassifier(
            model=counted,
            loss=nn.CrossEntropyLoss(),
            input_shape=(1, 28, 28),
            nb_classes=10,
            clip_values=(0.0, 1.0),
            device_type="cpu",
        )
        art = SquareAttack(
            est,
            norm=np.inf,
            eps=args.eps,
            max_iter=args.max_queries,
            p_init=0.8,
            nb_restarts=1,
            batch_size=args.n,
            verbose=False,
        )
        xn, yn = x.numpy(), y.numpy()
        t = time.perf_counter()
        x_adv = art.generate(xn, yn)
        sec = time.perf_counter() - t
        x_adv = torch.as_tensor(x_adv)
        rows["art"] = {
            "library": "art",
            "attack": attack,
            "n": args.n,
            "seconds": round(sec, 3),
            "clean_accuracy": round(clean, 4),
            "robust_accuracy": round(accuracy(module, x_adv, y), 4),
            "mean_queries_successful": None,
            "forward_samples": counted.samples,
            "forward_samples_per_image": round(counted.samples / args.n, 2),
            "linf_max": round(float((x_adv - x).abs().amax()), 6),
        }
        emit(rows["art"])
        b, a = rows["bastion"], rows["art"]
        emit({"ratio": "square art / bastion (time)", "value": round(a["seconds"] / b["seconds"], 3), "target": ">= 3"})
        emit(
            {
                "ratio": "square art / bastion (forward samples)",
                "value": round(a["forward_samples"] / b["forward_samples"], 3),
                "target": ">= 1",
            }
        )
        emit(
            {
                "check": "square bastion robust acc <= art's",
                "value": b["robust_accuracy"],
                "art": a["robust_accuracy"],
                "target": "<= art",
            }
        )
    emit(
        {
            "check": "square beats the noise floor (robust acc points)",
            "value": round(100 * (rows["noise"]["robust_accuracy"] - rows["bastion"]["robust_accuracy"]), 2),
            "target": "> 0",
        }
    )


if __name__ == "__main__":
    main()
