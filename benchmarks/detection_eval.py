#!/usr/bin/env python
"""Adversarial-input detection on zoo:mnist-cnn / mnist5k, evaluated non-adaptively and adaptively.

For each detector (Mahalanobis, Lee et al. 2018; multi-layer activations, Lee et al.'s feature ensemble;
feature squeezing, Xu et al. 2018): fit on the mnist5k training split (--fit images), calibrate at --fpr
on test images [--calib-start, --calib-start + --calib), measure the false-positive rate on the test
images after those, then attack the first --n test images at Linf eps (--eps):

- non-adaptive: PGD (40 steps, fixed budget; and the early-stopped variant) on the bare model — its
  success on the model, the detection rate among its successful examples, and its success against
  model + detector (misclassified *and* not flagged);
- adaptive: DetectorAwarePGD (Carlini & Wagner 2017; Bryniarski et al. 2022; BPDA through squeezers)
  against model + detector.

Success rates against the combination are over the inputs the combination gets right (accepted and
correctly labelled). Prints one JSON line per detector, then one summary line. These machines are
noisy: the seconds are indicative.

    python benchmarks/detection_eval.py                       # 200 images, adaptive 100 steps x 3 restarts
    python benchmarks/detection_eval.py --n 100 --detectors mahalanobis,activations
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import bastion
from bastion.attacks import PGD
from bastion.defenses.detection import DetectingClassifier, DetectorAwarePGD, get_detector


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def rate(mask: torch.Tensor, among: torch.Tensor) -> float:
    n = int(among.sum())
    return round(float((mask & among).sum()) / n, 4) if n else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="attacked mnist5k test images (the first n)")
    ap.add_argument("--eps", type=float, default=0.3, help="Linf budget")
    ap.add_argument("--fpr", type=float, default=0.05, help="target false-positive rate")
    ap.add_argument("--fit", type=int, default=4000, help="training images the detectors are fitted on")
    ap.add_argument("--calib-start", type=int, default=500, help="first test image of the calibration set")
    ap.add_argument("--calib", type=int, default=250, help="calibration images; the FPR is measured on the rest")
    ap.add_argument("--pgd-steps", type=int, default=40)
    ap.add_argument("--adaptive-steps", type=int, default=100)
    ap.add_argument("--adaptive-restarts", type=int, default=3)
    ap.add_argument("--detectors", default="mahalanobis,activations,squeeze")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.n > args.calib_start:
        ap.error("--n must not exceed --calib-start (attacked and calibration images must not overlap)")

    model = bastion.models.load_zoo("mnist-cnn")
    data = bastion.load_dataset("mnist5k")
    x, y = data.x_test[: args.n], data.y_test[: args.n]
    c0, c1 = args.calib_start, args.calib_start + args.calib
    x_cal, x_held = data.x_test[c0:c1], data.x_test[c1:]

    t = time.perf_counter()
    pgd_runs = {
        "fixed": PGD(eps=args.eps, steps=args.pgd_steps, early_stop=False)(model, x, y),
        "early_stop": PGD(eps=args.eps, steps=args.pgd_steps)(model, x, y),
    }
    pgd_seconds = time.perf_counter() - t
    summary = {}
    for name in args.detectors.split(","):
        t = time.perf_counter()
        det = get_detector(name).fit(model, data.x_train[: args.fit], data.y_train[: args.fit])
        det.calibrate(x_cal, fpr=args.fpr)
        fit_seconds = time.perf_counter() - t
        dc = DetectingClassifier(model, det)
        with torch.no_grad():
            fpr_held = float(det.detect(x_held).float().mean())
            correct = dc.predict(x) == y
        row: dict = {
            "detector": name,
            "config": repr(det),
            "model": "zoo:mnist-cnn",
            "data": "mnist5k",
            "n": args.n,
            "eps": args.eps,
            "fpr_target": args.fpr,
            "threshold": round(det.threshold_, 6),
            "fpr_heldout": round(fpr_held, 4),
            "n_heldout": int(x_held.shape[0]),
            "clean_accuracy_combined": round(float(correct.float().mean()), 4),
        }
        for key, r in pgd_runs.items():
            fooled = r.success & r.clean_correct
            detected = det.detect(r.x_adv)
            row[f"pgd_{key}_success_bare"] = round(r.success_rate, 4)
            row[f"pgd_{key}_detection_rate"] = rate(detected, fooled)
            row[f"pgd_{key}_success_combined"] = rate(dc.attack_success(r.x_adv, y), correct)
        attack = DetectorAwarePGD(eps=args.eps, steps=args.adaptive_steps, restarts=args.adaptive_restarts)
        t = time.perf_counter()
        ra = attack(dc, x, y)
        row["adaptive_success_combined"] = round(ra.success_rate, 4)
        row["adaptive_attack"] = repr(attack)
        row["adaptive_seconds"] = round(time.perf_counter() - t, 1)
        row["fit_calibrate_seconds"] = round(fit_seconds, 1)
        row["adaptive_at_least_nonadaptive"] = ra.success_rate >= max(
            row["pgd_fixed_success_combined"], row["pgd_early_stop_success_combined"]
        )
        emit(row)
        summary[name] = {
            "fpr": row["fpr_heldout"],
            "detected_pgd": row["pgd_fixed_detection_rate"],
            "nonadaptive": row["pgd_fixed_success_combined"],
            "adaptive": row["adaptive_success_combined"],
        }
    emit({"summary": summary, "pgd_seconds": round(pgd_seconds, 1)})


if __name__ == "__main__":
    main()
