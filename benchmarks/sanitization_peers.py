#!/usr/bin/env python
"""Training-set sanitisation against ART 1.20, side by side, on one BadNets-poisoned mnist-cnn.

The poisoned set and model are the test suite's (``tests/poison_helpers.badnets_mnist``): BadNets at 5% of mnist5k
(200 of 4,000 training records; 3x3 checkerboard, target 0 — a third of class 0 is poison) and mnist-cnn trained
on it with the zoo's recipe (cached under $BASTION_HOME/test-models). Methods, each fitted on the 4,000 training
records:

- bastion ``spectral`` (Tran et al. 2018) and ART ``SpectralSignatureDefense`` at the same expected poison share
  per class (``--rates``: the 5% the attack used and the true third of the target class) and eps_multiplier 1.5;
- bastion ``clustering`` (Chen et al. 2018; ICA to 10 dimensions, 2-means, relative size 0.35 + silhouette 0.10)
  and ART ``ActivationDefence`` with its defaults (PCA, the smaller cluster of every class), with the paper's
  settings (FastICA to 10 dimensions, ``silhouette-scores``: the same 0.35 / 0.10 rules) and with FastICA and the
  size rule alone (``relative-size``). A peer that raises is reported with its error and the comparison goes on;
- bastion ``clustering`` with Chen et al.'s exclusionary reclassification (``reclassify=``: one mnist-cnn training
  per flagged class; in the retraining section, timed with its trainings, no ART counterpart run).

ART reads the activations of the model's last layer (its ``detect_poison`` fixes the index); ``art@logits`` is
ART as shipped, ``art@penultimate`` gives ART the module cut after its last ReLU, so it reads the layer bastion
reads. ART's KMeans/FastICA draw from numpy's global RNG: it is seeded before every ART run. Per method: precision,
recall, F1, removed clean rate, records removed, the median seconds over ``--repeats`` and, for bastion/ART pairs,
the ratio of times — end to end (features included) and for the analysis alone (activations computed once beforehand:
both libraries run the same network, whose forward pass dominates). Then bastion clustering over ``--seeds`` seeds
(stability), and — unless ``--no-retrain`` — mnist-cnn retrained (zoo recipe) on what each bastion method keeps and
on the oracle's keep (exactly the poison removed): attack success rate, clean accuracy against the clean zoo
model's, accuracy per class. Prints JSON lines (``--out FILE`` writes them too). These machines are shared and
noisy: time ratios are measured side by side, in one process, with the same thread count.

    python benchmarks/sanitization_peers.py --out sanitization.jsonl
    python benchmarks/sanitization_peers.py --no-retrain --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bastion.attacks.poisoning import evaluate_poisoning
from bastion.data import load_dataset
from bastion.defenses.sanitization import ActivationClustering, get_sanitizer
from bastion.defenses.sanitization.clustering import recipe_trainer
from bastion.metrics import detection_scores, roc_auc
from bastion.models.zoo import load_zoo
from poison_helpers import badnets_mnist, train_cached

OUT: list[str] = []


def emit(obj: dict) -> None:
    line = json.dumps(obj)
    OUT.append(line)
    print(line, flush=True)


Run = Callable[[], tuple[torch.Tensor, torch.Tensor | None]]  # -> (removed (N,) bool, scores (N,) or None)


def timed(run: Run, repeats: int) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """The removals and scores of the last run and the median seconds over ``repeats`` runs."""
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        removed, scores = run()
        seconds.append(time.perf_counter() - t0)
    return removed, scores, statistics.median(seconds)


def art_classifier(module: torch.nn.Module, layer: str):
    from art.estimators.classification import PyTorchClassifier

    net = module if layer == "logits" else torch.nn.Sequential(*list(module.children())[:-1])
    return PyTorchClassifier(
        model=net,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(1, 28, 28),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )


def art_runner(kind: str, module: torch.nn.Module, layer: str, x: np.ndarray, y: np.ndarray, cached, **kw) -> Run:
    """ART's defence; with ``cached`` (its activations, computed once) only its analysis is timed."""
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense

    def run() -> tuple[torch.Tensor, None]:
        np.random.seed(0)  # ART's KMeans / FastICA use numpy's global RNG
        clf = art_classifier(module, layer)  # built inside: ART caches activations on the defence object
        if cached is not None:
            clf.get_activations = lambda *a, **k: cached
        if kind == "spectral":
            d = SpectralSignatureDefense(clf, x, y, expected_pp_poison=kw["rate"], batch_size=500, eps_multiplier=1.5)
            _, is_clean = d.detect_poison()
        else:
            d = ActivationDefence(clf, x, y)
            _, is_clean = d.detect_poison(**kw)
        return torch.tensor(np.asarray(is_clean) == 0), None

    return run


def bastion_runner(name: str, model, x: torch.Tensor, y: torch.Tensor, cached, **kw) -> Run:
    """bastion's sanitiser; with ``cached`` (the penultimate activations) only its analysis is timed."""

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        san = get_sanitizer(name, **kw)
        san = san.fit(model, x, y) if cached is None else san.fit_features(cached, y, n_classes=10)
        return san.remove_, san.scores_

    return run


def runners(poisoned, model, rates: list[float], cached: dict | None) -> dict[str, Run]:
    x, y = poisoned.data.x_train, poisoned.data.y_train
    xn, yn = x.numpy(), np.eye(10, dtype=np.float32)[y.numpy()]  # ART wants one-hot labels
    module = model.module
    ours = None if cached is None else cached["bastion"]

    def art(layer: str):
        return None if cached is None else cached[layer]

    runs: dict[str, Run] = {}
    for rate in rates:
        runs[f"bastion-spectral@{rate:.3g}"] = bastion_runner("spectral", model, x, y, ours, expected_rate=rate)
        for layer in ("penultimate", "logits"):
            runs[f"art-spectral@{rate:.3g}@{layer}"] = art_runner(
                "spectral", module, layer, xn, yn, art(layer), rate=rate
            )
    runs["bastion-clustering"] = bastion_runner("clustering", model, x, y, ours)
    paper = {"nb_dims": 10, "reduce": "FastICA", "cluster_analysis": "silhouette-scores"}
    size_only = {**paper, "cluster_analysis": "relative-size"}
    for layer in ("penultimate", "logits"):
        for variant, kw in (("paper", paper), ("size", size_only), ("default", {})):
            runs[f"art-clustering-{variant}@{layer}"] = art_runner(
                "clustering", module, layer, xn, yn, art(layer), **kw
            )
    return runs


def compare(poisoned, model, args, *, analysis_only: bool) -> dict[str, dict]:
    """Every method, timed end to end (features included) or, with ``analysis_only``, on activations computed
    once beforehand (both libraries read the same network; its forward pass is then left out of the time)."""
    cached = None
    if analysis_only:
        x = poisoned.data.x_train
        cached = {"bastion": model.features(x)[0]}
        for layer in ("penultimate", "logits"):
            clf = art_classifier(model.module, layer)
            cached[layer] = clf.get_activations(x.numpy(), layer=len(clf.layer_names) - 1, batch_size=500)
    results: dict[str, dict] = {}
    for name, run in runners(poisoned, model, args.rates, cached).items():
        try:
            removed, scores, seconds = timed(run, args.repeats)
        except Exception as exc:  # a peer's bug is a result to report, not the end of the comparison
            emit(
                {
                    "method": name,
                    "timed": "analysis" if analysis_only else "end-to-end",
                    "error": f"{type(exc).__name__}: {exc}",
                }
            )
            continue
        row = {
            "method": name,
            "timed": "analysis" if analysis_only else "end-to-end",
            **detection_scores(removed, poisoned.is_poisoned),
            "seconds": round(seconds, 3),
        }
        if scores is not None:
            row["roc_auc"] = roc_auc(poisoned.is_poisoned, scores)
        results[name] = row
        emit(row)
    return results


def ratios(results: dict[str, dict], rates: list[float]) -> None:
    pairs = [
        (f"bastion-spectral@{r:.3g}", f"art-spectral@{r:.3g}@{layer}")
        for r in rates
        for layer in ("penultimate", "logits")
    ]
    pairs += [
        ("bastion-clustering", f"art-clustering-{v}@{layer}")
        for v in ("paper", "size", "default")
        for layer in ("penultimate", "logits")
    ]
    for ours, theirs in pairs:
        if ours not in results or theirs not in results:  # a method that raised: its error line says why
            continue
        a, b = results[ours], results[theirs]
        emit(
            {
                "pair": f"{ours} vs {theirs}",
                "timed": a["timed"],
                "time_ratio": round(a["seconds"] / b["seconds"], 3),
                "f1": [a["f1"], b["f1"]],
                "f1_at_least_arts": bool(a["f1"] >= b["f1"] or (np.isnan(b["f1"]) and not np.isnan(a["f1"]))),
                "at_most_half_arts_time": a["seconds"] <= 0.5 * b["seconds"],
            }
        )


def stability(poisoned, model, seeds: int) -> None:
    y, truth = poisoned.data.y_train, poisoned.is_poisoned
    feats = model.features(poisoned.data.x_train)[0]  # the same activations every time: only the restarts differ
    rows = []
    for seed in range(seeds):
        san = get_sanitizer("clustering", seed=seed).fit_features(feats, y, n_classes=10)
        d = detection_scores(san.remove_, truth)
        rows.append((d["recall"], d["removed_clean_rate"], d["f1"], torch.nonzero(san.flagged_).flatten().tolist()))
    emit(
        {
            "stability": "bastion-clustering",
            "seeds": seeds,
            "recall_min": min(r[0] for r in rows),
            "removed_clean_rate_max": max(r[1] for r in rows),
            "f1_range": [min(r[2] for r in rows), max(r[2] for r in rows)],
            "flagged_classes": [r[3] for r in rows],
        }
    )


def per_class_accuracy(predict, data) -> list[float]:
    pred = predict(data.x_test)
    return [round(float((pred[data.y_test == c] == c).float().mean()), 3) for c in range(data.n_classes)]


def retrain(poisoned, model) -> None:
    """mnist-cnn retrained on what each sanitiser keeps, and on the oracle's keep (exactly the poison removed: the
    best any sanitiser can do, 3,800 records where the clean model had 4,000)."""
    clean = load_zoo("mnist-cnn")
    before = evaluate_poisoning(model.predict, poisoned, clean_predict=clean.predict)
    emit(
        {
            "retrain": "none (the poisoned model)",
            **before,
            "clean_model_per_class": per_class_accuracy(clean.predict, poisoned.data),
        }
    )
    keep_sets = {name: get_sanitizer(name).sanitize(model, poisoned.data) for name in ("spectral", "clustering")}
    # Chen et al.'s exclusionary reclassification: one real mnist-cnn training (zoo recipe) per flagged class
    t0 = time.perf_counter()
    recl = ActivationClustering(reclassify=recipe_trainer("mnist-cnn")).sanitize(model, poisoned.data)
    removed = torch.zeros(poisoned.data.x_train.shape[0], dtype=torch.bool)
    removed[recl.removed] = True
    emit(
        {
            "method": "bastion-clustering+reclassify",
            "timed": "end-to-end, trainings included",
            **detection_scores(removed, poisoned.is_poisoned),
            "seconds": round(time.perf_counter() - t0, 1),
            "roc_auc": roc_auc(poisoned.is_poisoned, recl.scores),
            "reclassified": recl.details["reclassified"],
        }
    )
    keep_sets["clustering+reclassify"] = recl
    d = poisoned.data
    oracle = torch.nonzero(~poisoned.is_poisoned).flatten()
    kept = {name: r.data for name, r in keep_sets.items()}
    kept["oracle"] = type(d)(d.name, d.x_train[oracle], d.y_train[oracle], d.x_test, d.y_test, d.bounds, d.n_classes)
    for name, data in kept.items():
        t0 = time.perf_counter()
        retrained = train_cached(data, "mnist-cnn")
        after = evaluate_poisoning(retrained.predict, poisoned, clean_predict=clean.predict)
        after["accuracy_drop_vs_clean_model"] = round(after["clean_model_accuracy"] - after["clean_accuracy"], 4)
        emit(
            {
                "retrain": name,
                "n_kept": int(data.x_train.shape[0]),
                "removed_per_class": None if name == "oracle" else keep_sets[name].details["removed_per_class"],
                "train_seconds": round(time.perf_counter() - t0, 1),
                **after,
                "per_class_accuracy": per_class_accuracy(retrained.predict, d),
            }
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="0.05,0.3333", help="expected poison shares per class for spectral")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per method (the median is reported)")
    ap.add_argument("--seeds", type=int, default=10, help="seeds of the clustering stability check")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (numpy/sklearn: set OMP_NUM_THREADS)")
    ap.add_argument("--no-retrain", action="store_true", help="skip retraining on the kept data")
    ap.add_argument("--out", default=None, help="also write the JSON lines to this file")
    args = ap.parse_args()
    args.rates = [float(r) for r in args.rates.split(",")]
    warnings.filterwarnings("ignore")  # FastICA's convergence warnings inside ART
    torch.set_num_threads(args.threads)
    poisoned, model = badnets_mnist(load_dataset("mnist5k"))
    torch.set_num_threads(args.threads)
    emit(
        {
            "setup": "badnets 5% mnist5k, target 0",
            "n_train": int(poisoned.data.x_train.shape[0]),
            "n_poisoned": poisoned.n_poisoned,
            "threads": args.threads,
            "repeats": args.repeats,
        }
    )
    for analysis_only in (False, True):
        ratios(compare(poisoned, model, args, analysis_only=analysis_only), args.rates)
    stability(poisoned, model, args.seeds)
    if not args.no_retrain:
        retrain(poisoned, model)
    if args.out:
        Path(args.out).write_text("\n".join(OUT) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
