#!/usr/bin/env python
"""Every poisoning attack's number (issue 13) on mnist5k / mnist-cnn and breast-cancer; one JSON line each.

- ``clean``: mnist-cnn with the zoo's recipe on clean mnist5k (the zoo model) — the accuracy to compare with;
- ``badnets``: 3x3 checkerboard at the bottom right, target 0, at --badnets-rates; mnist-cnn (zoo recipe) trained
  on each poisoned set: attack success rate (triggered test inputs of the other classes answered 0) and clean
  accuracy next to the clean model's (targets: ASR >= 0.95 at 5% with clean accuracy within 1.5 points);
- ``blend``: Chen et al.'s noise key at alpha 0.2, 5% (target: ASR >= 0.90);
- ``clean-label``: Turner et al.'s attack (target 0, trigger at every corner, PGD on the zoo model) next to the
  same trigger stamped on unmodified target images (``perturbation="none"``), same records, labels untouched,
  at --cl-rates (10% is every target image) and --cl-eps; and the input-space interpolation variant;
- ``feature-collision``: 20 targets chosen by a seeded rule (test images the zoo model gets right, drawn with
  torch.Generator seed --fc-seed; each with a base class drawn uniformly among the others, same generator); per
  target: --fc-poisons poisons, then the transfer-learning victim (the zoo model's feature extractor frozen, its
  last Linear retrained from scratch on the poisoned set: ``train_linear_head``) — hit or not; the same head
  retrained on the clean set is the control (it must not already answer the base class);
- ``label-flip``: breast-cancer, scikit-learn ``LogisticRegression(max_iter=1000)`` fitted on the flipped labels:
  test accuracy for loss-max (ALFA) and random flips (--lf-seeds seeds) at 10% and 20%.

    python benchmarks/poisoning_attacks.py --out poisoning.jsonl
    python benchmarks/poisoning_attacks.py --only label-flip,feature-collision

Timings are wall seconds on whatever machine runs it (the CI machines are shared: indicative only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch
from threadpoolctl import threadpool_limits

from bastion.attacks.poisoning import (
    BadNets,
    Blended,
    CleanLabel,
    FeatureCollision,
    LabelFlip,
    PoisonedData,
    evaluate_poisoning,
    train_linear_head,
)
from bastion.data import Dataset, load_dataset
from bastion.models import TorchClassifier
from bastion.models.training import train_architecture
from bastion.models.zoo import load_zoo

SECTIONS = ("clean", "badnets", "blend", "clean-label", "feature-collision", "label-flip")


class Out:
    def __init__(self, path: str | None) -> None:
        self.file = open(path, "w", encoding="utf-8") if path else None  # closed in main

    def __call__(self, obj: dict[str, Any]) -> None:
        line = json.dumps(obj)
        print(line, flush=True)
        if self.file:
            self.file.write(line + "\n")
            self.file.flush()


def train_on(poisoned: PoisonedData, zoo: TorchClassifier) -> tuple[TorchClassifier, float]:
    """mnist-cnn with the zoo's recipe on the poisoned training split; (classifier, seconds)."""
    start = time.perf_counter()
    module, _ = train_architecture("mnist-cnn", poisoned.data)
    module.eval()
    return zoo.with_module(module), time.perf_counter() - start


def backdoor_line(section: str, poisoned: PoisonedData, zoo: TorchClassifier, **extra: Any) -> dict[str, Any]:
    model, seconds = train_on(poisoned, zoo)
    r = evaluate_poisoning(model.predict, poisoned, clean_predict=zoo.predict)
    return {
        "section": section,
        **extra,
        "rate": round(poisoned.rate, 4),
        "n_poisoned": poisoned.n_poisoned,
        "attack_success_rate": round(r["attack_success_rate"], 4),
        "clean_model_attack_success_rate": round(r["clean_model_attack_success_rate"], 4),
        "clean_accuracy": round(r["clean_accuracy"], 4),
        "clean_model_accuracy": round(r["clean_model_accuracy"], 4),
        "accuracy_drop_points": round(100 * (r["clean_model_accuracy"] - r["clean_accuracy"]), 2),
        "train_seconds": round(seconds, 1),
    }


def run_backdoors(args: argparse.Namespace, mnist: Dataset, zoo: TorchClassifier, emit: Out) -> None:
    if "badnets" in args.only:
        for rate in args.badnets_rates:
            emit(backdoor_line("badnets", BadNets(rate=rate, target=0, size=3, seed=0).poison(mnist), zoo))
    if "blend" in args.only:
        emit(backdoor_line("blend", Blended(rate=0.05, target=0, alpha=0.2, seed=0).poison(mnist), zoo, alpha=0.2))


def run_clean_label(args: argparse.Namespace, mnist: Dataset, zoo: TorchClassifier, emit: Out) -> None:
    for rate in args.cl_rates:
        emit(backdoor_line("clean-label", CleanLabel(rate=rate, perturbation="none").poison(mnist), zoo,
                           perturbation="none"))  # fmt: skip
        for eps in args.cl_eps:
            start = time.perf_counter()
            poisoned = CleanLabel(rate=rate, perturbation="pgd", eps=eps, surrogate=zoo).poison(mnist)
            craft = time.perf_counter() - start
            emit(backdoor_line("clean-label", poisoned, zoo, perturbation="pgd", eps=eps, craft_seconds=round(craft, 1),
                               surrogate_fooled=round(poisoned.extra["surrogate_fooled"], 4)))  # fmt: skip
        poisoned = CleanLabel(rate=rate, perturbation="interpolation", tau=args.cl_tau).poison(mnist)
        emit(backdoor_line("clean-label", poisoned, zoo, perturbation="interpolation", tau=args.cl_tau))


def fc_targets(mnist: Dataset, zoo: TorchClassifier, n: int, seed: int) -> list[tuple[int, int]]:
    """``n`` (test index, base class) pairs: correctly classified test images in a seeded random order, each with
    a base class drawn uniformly among the other classes."""
    g = torch.Generator().manual_seed(seed)
    right = torch.nonzero(zoo.predict(mnist.x_test) == mnist.y_test).flatten()
    chosen = right[torch.randperm(right.numel(), generator=g)[:n]]
    pairs = []
    for i in chosen.tolist():
        shift = int(torch.randint(1, mnist.n_classes, (1,), generator=g))
        pairs.append((i, (int(mnist.y_test[i]) + shift) % mnist.n_classes))
    return pairs


def run_feature_collision(args: argparse.Namespace, mnist: Dataset, zoo: TorchClassifier, emit: Out) -> None:
    control = train_linear_head(zoo, mnist.x_train, mnist.y_train, seed=0)
    hits = []
    for k, (index, base) in enumerate(fc_targets(mnist, zoo, args.fc_targets, args.fc_seed)):
        start = time.perf_counter()
        attack = FeatureCollision(model=zoo, target_index=index, base_class=base, n_poisons=args.fc_poisons,
                                  watermark=args.fc_watermark, seed=k)  # fmt: skip
        poisoned = attack.poison(mnist)
        craft = time.perf_counter() - start
        victim = train_linear_head(zoo, poisoned.data.x_train, poisoned.data.y_train, seed=0)
        r = evaluate_poisoning(victim.predict, poisoned, clean_predict=control.predict)
        hits.append(r["targets_hit"])
        emit({
            "section": "feature-collision", "target_index": index, "true_class": int(mnist.y_test[index]),
            "base_class": base, "n_poisons": args.fc_poisons, "watermark": args.fc_watermark,
            "hit": bool(r["targets_hit"] == 1.0), "clean_head_hit": bool(r["clean_model_targets_hit"] == 1.0),
            "victim_clean_accuracy": round(r["clean_accuracy"], 4),
            "feature_distance": [round(v, 3) for v in poisoned.extra["feature_distance"]],
            "distance_to_base_l2": [round(v, 3) for v in poisoned.extra["distance_to_base"]],
            "craft_seconds": round(craft, 1),
        })  # fmt: skip
    emit({"section": "feature-collision-summary", "targets": len(hits), "hit_rate": round(statistics.mean(hits), 4),
          "n_poisons": args.fc_poisons, "watermark": args.fc_watermark,
          "control_head_clean_accuracy": round(evaluate_poisoning(control.predict, poisoned)["clean_accuracy"], 4)})  # fmt: skip


def run_label_flip(args: argparse.Namespace, emit: Out) -> None:
    from sklearn.linear_model import LogisticRegression

    data = load_dataset("breast-cancer")

    def accuracy(d: Dataset) -> float:
        model = LogisticRegression(max_iter=1000).fit(d.x_train.double().numpy(), d.y_train.numpy())
        return float(model.score(d.x_test.double().numpy(), d.y_test.numpy()))

    clean = accuracy(data)
    for rate in (0.1, 0.2):
        start = time.perf_counter()
        worst = LabelFlip(rate=rate, strategy="loss-max").poison(data)
        seconds = time.perf_counter() - start
        randoms = [accuracy(LabelFlip(rate=rate, seed=s).poison(data).data) for s in range(args.lf_seeds)]
        emit({
            "section": "label-flip", "data": "breast-cancer", "victim": "LogisticRegression(max_iter=1000)",
            "rate": rate, "n_flipped": worst.n_poisoned, "clean_accuracy": round(clean, 4),
            "loss_max_accuracy": round(accuracy(worst.data), 4), "loss_max_rounds": worst.extra["rounds_run"],
            "loss_max_seconds": round(seconds, 2), "random_accuracy_mean": round(statistics.mean(randoms), 4),
            "random_accuracy_min": round(min(randoms), 4), "random_accuracy": [round(a, 4) for a in randoms],
        })  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="also write the JSON lines to this file")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {', '.join(SECTIONS)}")
    ap.add_argument("--badnets-rates", type=float, nargs="+", default=[0.005, 0.01, 0.02, 0.05])
    ap.add_argument("--cl-rates", type=float, nargs="+", default=[0.05, 0.1])
    ap.add_argument("--cl-eps", type=float, nargs="+", default=[0.3])
    ap.add_argument("--cl-tau", type=float, default=0.3)
    ap.add_argument("--fc-targets", type=int, default=20)
    ap.add_argument("--fc-poisons", type=int, default=5)
    ap.add_argument("--fc-watermark", type=float, default=0.0)
    ap.add_argument("--fc-seed", type=int, default=0)
    ap.add_argument("--lf-seeds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    args.only = {s.strip() for s in args.only.split(",")}
    unknown = args.only - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}: choose among {', '.join(SECTIONS)}")
    torch.set_num_threads(args.threads)
    emit = Out(args.out)
    start = time.perf_counter()
    with threadpool_limits(args.threads):  # scikit-learn's BLAS: as many threads as torch gets
        if "label-flip" in args.only:
            run_label_flip(args, emit)
        if args.only & {"clean", "badnets", "blend", "clean-label", "feature-collision"}:
            mnist = load_dataset("mnist5k")
            zoo = load_zoo("mnist-cnn")
            assert isinstance(zoo, TorchClassifier)
            acc = evaluate_poisoning(zoo.predict, BadNets(rate=0.05).poison(mnist))["clean_accuracy"]
            emit({"section": "clean", "model": "zoo:mnist-cnn", "data": "mnist5k", "clean_accuracy": round(acc, 4)})
            run_backdoors(args, mnist, zoo, emit)
            if "clean-label" in args.only:
                run_clean_label(args, mnist, zoo, emit)
            if "feature-collision" in args.only:
                run_feature_collision(args, mnist, zoo, emit)
    emit({"section": "done", "seconds": round(time.perf_counter() - start, 1), "threads": args.threads})
    if emit.file:
        emit.file.close()


if __name__ == "__main__":
    main()
