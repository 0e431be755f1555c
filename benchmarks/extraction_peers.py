#!/usr/bin/env python
"""Knockoff Nets side by side: bastion's ``KnockoffNets`` vs IBM ART 1.20's ``KnockoffNets`` on the zoo mnist-cnn.

Issue 15: at 250 / 500 / 1,000 / 2,000 / 5,000 queries the fidelity curve must be at least ART's with the same copy
architecture, pool and budget, in at most half its time; label-only numbers beside the probability ones.

The setting, identical for both libraries: the victim is the zoo ``mnist-cnn`` (trained on the 4,000 training
images of ``mnist5k``); the attacker's pool is those 4,000 images, unlabelled (the victim's own domain — the pool
``mnist5k`` offers; each pool image is queried at most once, so the largest budget is 4,000, not 5,000); the copy
is a freshly initialised ``mnist-cnn`` (the same initialisation for both: one ``state_dict``), trained with Adam
(lr 1e-3) in batches of 64; fidelity (argmax agreement with the victim) and accuracy on the 1,000 test images.

- ART: ``KnockoffNets(sampling_strategy="random", use_probability=True|False, nb_epochs=E, batch_size_fit=64)``
  run once per budget (an ART run gives one copy; its curve is five runs). The victim is given to ART with a
  softmax on top so that "probabilities" are probabilities. Note what ART's ``PyTorchClassifier.fit`` does with
  them: with ``CrossEntropyLoss`` it reduces the targets to their argmax, so ART's probability mode trains on the
  victim's labels — the soft information is lost (visible below: its two modes coincide).
- bastion: ``KnockoffNets(strategy="random", labels_only=False|True, epochs=E')``, one ``extract`` call with the
  budgets as checkpoints (the copy is retrained from the same initialisation on every answer so far at each
  checkpoint); its time at each budget is the time to that checkpoint, ART's is the sum of its runs up to that
  budget — both are the time to get the curve up to there. ``--bastion-epochs`` defaults to ``--epochs``.

A plain torch training loop on the same queries (``bare-torch-loop``: Adam, cross-entropy on the labels, the same
epochs and batches, nothing else) gives the floor: both libraries spend their time in the copy's forward and
backward passes, so neither can take less than the bare loop at the same training.

Prints one JSON line per (library, mode, budget) and a comparison line per mode; ``--out FILE`` writes them too.

    python benchmarks/extraction_peers.py --threads 2 --out extraction.jsonl
    python benchmarks/extraction_peers.py --epochs 10 --bastion-epochs 5
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch

from bastion import metrics
from bastion.attacks.extraction import KnockoffNets
from bastion.data import load_dataset
from bastion.models.architectures import build_architecture
from bastion.models.zoo import load_zoo

warnings.filterwarnings("ignore")
OUT: list[str] = []


def emit(obj: dict) -> None:
    line = json.dumps(obj)
    OUT.append(line)
    print(line, flush=True)


def art_curve(victim, data, budgets: list[int], init: dict, labels_only: bool, epochs: int, seed: int) -> list[dict]:
    from art.attacks.extraction import KnockoffNets as ArtKnockoff
    from art.estimators.classification import PyTorchClassifier

    shape = tuple(data.x_train.shape[1:])
    victim_art = PyTorchClassifier(
        model=torch.nn.Sequential(victim.module, torch.nn.Softmax(dim=1)),
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=shape,
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    pool = data.x_train.numpy()
    victim_pred = victim.predict(data.x_test)
    rows, total = [], 0.0
    for budget in budgets:
        np.random.seed(seed)  # ART draws its queries from numpy's global RNG
        torch.manual_seed(seed)
        module, _ = build_architecture("mnist-cnn")
        module.load_state_dict(init)
        thief = PyTorchClassifier(
            model=module,
            loss=torch.nn.CrossEntropyLoss(),
            optimizer=torch.optim.Adam(module.parameters(), lr=1e-3),
            input_shape=shape,
            nb_classes=10,
            clip_values=(0.0, 1.0),
        )
        attack = ArtKnockoff(
            classifier=victim_art,
            batch_size_fit=64,
            batch_size_query=64,
            nb_epochs=epochs,
            nb_stolen=budget,
            sampling_strategy="random",
            use_probability=not labels_only,
        )
        start = time.perf_counter()
        stolen = attack.extract(x=pool, thieved_classifier=thief)
        seconds = time.perf_counter() - start
        total += seconds
        pred = torch.as_tensor(stolen.predict(data.x_test.numpy()).argmax(1))
        rows.append(
            {
                "queries": budget,
                "fidelity": metrics.fidelity(pred, victim_pred),
                "accuracy": metrics.accuracy(pred, data.y_test),
                "seconds": round(seconds, 2),
                "curve_seconds": round(total, 2),
            }
        )
    return rows


def bastion_curve(victim, data, budgets: list[int], init: dict, labels_only: bool, epochs: int, seed: int):
    def copy() -> torch.nn.Module:
        module, _ = build_architecture("mnist-cnn")
        module.load_state_dict(init)
        return module

    attack = KnockoffNets(
        pool=data.x_train,
        copy=copy,
        strategy="random",
        labels_only=labels_only,
        epochs=epochs,
        batch_size=64,
        lr=1e-3,
        seed=seed,
    )
    result = attack.extract(victim, budgets[-1], eval_x=data.x_test, eval_y=data.y_test, checkpoints=budgets)
    seconds = result.extra["checkpoint_seconds"]
    rows = []
    for i, point in enumerate(result.curve):
        rows.append(
            {
                "queries": point.queries,
                "fidelity": point.fidelity,
                "accuracy": point.accuracy,
                "seconds": round(seconds[i] - (seconds[i - 1] if i else 0.0), 2),
                "curve_seconds": round(seconds[i], 2),
            }
        )
    return rows, result.queries


def bare_curve(victim, data, budgets: list[int], init: dict, epochs: int, seed: int) -> list[dict]:
    """The floor: a plain torch loop (Adam, hard-label cross-entropy, batches of 64, the same epochs) on the same
    queries — what any implementation spends in the copy's forward and backward passes."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(data.x_train.shape[0], generator=g)
    rows, total = [], 0.0
    for budget in budgets:
        start = time.perf_counter()
        x = data.x_train[order[:budget]]
        y = victim.predict(x)
        module, _ = build_architecture("mnist-cnn")
        module.load_state_dict(init)
        module.train()
        opt = torch.optim.Adam(module.parameters(), lr=1e-3)
        for _ in range(epochs):
            for idx in torch.randperm(budget, generator=g).split(64):
                loss = torch.nn.functional.cross_entropy(module(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        seconds = time.perf_counter() - start
        total += seconds
        with torch.no_grad():
            pred = module.eval()(data.x_test).argmax(1)
        rows.append(
            {
                "queries": budget,
                "fidelity": metrics.fidelity(pred, victim.predict(data.x_test)),
                "accuracy": metrics.accuracy(pred, data.y_test),
                "seconds": round(seconds, 2),
                "curve_seconds": round(total, 2),
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", default="250,500,1000,2000,4000")
    ap.add_argument("--epochs", type=int, default=10, help="ART's nb_epochs (and bastion's unless --bastion-epochs)")
    ap.add_argument("--bastion-epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-art", action="store_true")
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    budgets = [int(b) for b in args.budgets.split(",")]
    data = load_dataset("mnist5k")
    victim = load_zoo("mnist-cnn")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        init = {k: v.clone() for k, v in build_architecture("mnist-cnn")[0].state_dict().items()}
    b_epochs = args.bastion_epochs or args.epochs
    bastion_curve(victim, data, budgets[:1], init, True, 1, args.seed)  # warm-up (thread pools, oneDNN), untimed
    emit(
        {
            "setting": "knockoff-random",
            "victim": "zoo:mnist-cnn",
            "victim_accuracy": metrics.accuracy(victim.predict(data.x_test), data.y_test),
            "pool": "mnist5k train (4000, unlabelled)",
            "eval": "mnist5k test (1000)",
            "art_epochs": args.epochs,
            "bastion_epochs": b_epochs,
            "threads": args.threads,
        }
    )
    for labels_only in (False, True):
        mode = "labels" if labels_only else "probabilities"
        ours, queries = bastion_curve(victim, data, budgets, init, labels_only, b_epochs, args.seed)
        assert queries == budgets[-1], queries
        for row in ours:
            emit({"library": "bastion", "mode": mode, **row})
        if args.skip_art:
            continue
        if not labels_only:
            for row in bare_curve(victim, data, budgets, init, args.epochs, args.seed):
                emit({"library": "bare-torch-loop", "mode": "labels", **row})
        theirs = art_curve(victim, data, budgets, init, labels_only, args.epochs, args.seed)
        for row in theirs:
            emit({"library": "art", "mode": mode, **row})
        emit(
            {
                "compare": mode,
                "fidelity_at_least_arts": [o["fidelity"] >= t["fidelity"] for o, t in zip(ours, theirs, strict=True)],
                "fidelity_gap": [round(o["fidelity"] - t["fidelity"], 3) for o, t in zip(ours, theirs, strict=True)],
                "curve_time_ratio": [
                    round(o["curve_seconds"] / t["curve_seconds"], 3) for o, t in zip(ours, theirs, strict=True)
                ],
            }
        )
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(OUT) + "\n")


if __name__ == "__main__":
    main()
