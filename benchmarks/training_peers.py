#!/usr/bin/env python
"""Adversarial training side by side: bastion's PGD-AT, TRADES and fast-AT vs ART's AdversarialTrainerMadryPGD.

Issue 5: on zoo:mnist-cnn / mnist5k at Linf eps = 0.3, after the same number of epochs bastion's PGD-AT
must reach a worst-case robust accuracy (APGD-CE + APGD-T ensemble) at least as high as ART's
`AdversarialTrainerMadryPGD` with the same architecture, data and attack settings, in at most 0.7× its
wall time; fast-AT must reach at least 90% of PGD-AT's robust accuracy in at most 0.35× PGD-AT's time.

Both libraries start from the same weights (the zoo's trained mnist-cnn, deep-copied), use Adam at the
same learning rate, batch 128, and the same inner PGD: --steps steps of --step-size from one uniform
random start. Both train on all 4,000 training images (bastion with ``holdout=False``: its per-epoch
clean/PGD-20 accuracies are taken on 256 of them, and that monitoring is inside bastion's time; by
default bastion holds those 256 out of training). fast-AT runs twice: with bastion's default prior start
(each example's perturbation from its previous epoch) and with Wong et al.'s random start. --seed seeds
bastion, and numpy and torch before ART's run. Evaluation: the first --n-eval test
images, clean accuracy and the worst case over bastion's Ensemble (APGD-CE then APGD-T, 9 targets,
100 steps) at eps = 0.3 — the same evaluation for every model. One process, one JSON line per model,
then the checks.

    python benchmarks/training_peers.py --skip-trades --seed 1   # about 5 minutes on 2 cores
    python benchmarks/training_peers.py --epochs 2 --n-eval 100 --skip-art
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings

import numpy as np
import torch

import bastion
from bastion.attacks import PGD, Ensemble
from bastion.defenses.training import AdversarialTrainingConfig, adversarial_train
from bastion.models import TorchClassifier

warnings.filterwarnings("ignore")


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def evaluate(model, x, y, eps: float) -> dict:
    t0 = time.perf_counter()
    pgd = PGD(eps=eps, steps=40)(model, x, y)
    ens = Ensemble(eps=eps)(model, x, y)
    return {
        "clean_accuracy": round(pgd.clean_accuracy, 4),
        "pgd40_robust_accuracy": round(pgd.robust_accuracy, 4),
        "ensemble_robust_accuracy": round(ens.robust_accuracy, 4),
        "ensemble_trail": ens.extra.get("robust_accuracy_after"),
        "eval_seconds": round(time.perf_counter() - t0, 1),
    }


def art_madry(base: TorchClassifier, data, epochs: int, eps: float, step: float, steps: int, lr: float, seed: int):
    from art.defences.trainer import AdversarialTrainerMadryPGD
    from art.estimators.classification import PyTorchClassifier

    module = copy.deepcopy(base.module)
    for p in module.parameters():
        p.requires_grad_(True)
    clf = PyTorchClassifier(
        model=module,
        loss=torch.nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(module.parameters(), lr=lr),
        input_shape=(1, 28, 28),
        nb_classes=10,
        clip_values=(np.float32(0.0), np.float32(1.0)),
        device_type="cpu",
    )
    trainer = AdversarialTrainerMadryPGD(
        clf, nb_epochs=epochs, batch_size=128, eps=eps, eps_step=step, max_iter=steps, num_random_init=1
    )
    np.random.seed(seed)  # ART shuffles and draws its random starts with numpy's global RNG
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    trainer.fit(data.x_train.numpy(), data.y_train.numpy())
    seconds = time.perf_counter() - t0
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return TorchClassifier(module, n_classes=10, input_shape=(1, 28, 28), output="logits"), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--fast-epochs", type=int, default=None, help="fast-AT epochs (default: --epochs)")
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--step-size", type=float, default=None, help="default 2.5 * eps / steps")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--n-eval", type=int, default=500)
    ap.add_argument("--skip-art", action="store_true")
    ap.add_argument("--skip-trades", action="store_true")
    ap.add_argument("--save-dir", default=None, help="write the trained models here (safetensors)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="bastion's seed; ART's runs seed numpy and torch with it")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    step = args.step_size or 2.5 * args.eps / args.steps
    base = bastion.models.load_zoo("mnist-cnn")
    data = bastion.load_dataset("mnist5k")
    x, y = data.x_test[: args.n_eval], data.y_test[: args.n_eval]
    emit(
        {
            "machine": {"threads": torch.get_num_threads(), "torch": torch.__version__},
            "model": "zoo:mnist-cnn",
            "epochs": args.epochs,
            "eps": args.eps,
            "inner_pgd": {"steps": args.steps, "step_size": step},
            "n_eval": args.n_eval,
        }
    )
    emit({"model": "undefended", **evaluate(base, x, y, args.eps)})

    results: dict[str, dict] = {}

    def bastion_run(defense: str, epochs: int, fast_init: str = "prior") -> None:
        cfg = AdversarialTrainingConfig(
            defense=defense,
            eps=args.eps,
            epochs=epochs,
            batch_size=128,
            lr=args.lr,
            attack_steps=args.steps,
            step_size=None if defense == "fast-at" else step,
            fast_init=fast_init,
            holdout=False,
            seed=args.seed,
        )
        name = defense if defense != "fast-at" or fast_init == "prior" else f"{defense}-{fast_init}"
        t0 = time.perf_counter()
        model, record = adversarial_train(base, data, cfg)
        seconds = time.perf_counter() - t0
        results[name] = {"seconds": round(seconds, 1), **evaluate(model, x, y, args.eps)}
        emit(
            {
                "model": f"bastion {name}",
                "seed": args.seed,
                "epochs_run": len(record["epochs"]),
                "step_size": cfg.alpha(args.eps),
                "overfit_events": record["overfit_events"],
                **results[name],
                "val_curve": [(e["val_clean_accuracy"], e["val_robust_accuracy"]) for e in record["epochs"]],
            }
        )
        if args.save_dir:
            bastion.save_model(
                model,
                f"{args.save_dir}/mnist-cnn-{name}.safetensors",
                arch="mnist-cnn",
                metadata={"bastion_record": record},
            )

    bastion_run("pgd-at", args.epochs)
    if not args.skip_art:
        model, seconds = art_madry(base, data, args.epochs, args.eps, step, args.steps, args.lr, args.seed)
        results["art"] = {"seconds": round(seconds, 1), **evaluate(model, x, y, args.eps)}
        emit({"model": "art AdversarialTrainerMadryPGD", "seed": args.seed, **results["art"]})
    bastion_run("fast-at", args.fast_epochs or args.epochs)  # the default start: the example's previous perturbation
    bastion_run("fast-at", args.fast_epochs or args.epochs, "random")  # Wong et al.'s uniform random start
    if not args.skip_trades:
        bastion_run("trades", args.epochs)

    pgd, fast = results["pgd-at"], results["fast-at"]
    if "art" in results:
        art = results["art"]
        emit(
            {
                "check": "PGD-AT worst-case robust accuracy bastion >= ART (same epochs)",
                "value": pgd["ensemble_robust_accuracy"],
                "peer": art["ensemble_robust_accuracy"],
                "pass": pgd["ensemble_robust_accuracy"] >= art["ensemble_robust_accuracy"],
            }
        )
        emit(
            {
                "check": "PGD-AT time bastion / ART",
                "value": round(pgd["seconds"] / art["seconds"], 3),
                "target": "<= 0.7",
                "pass": pgd["seconds"] <= 0.7 * art["seconds"],
            }
        )
    share = fast["ensemble_robust_accuracy"] / max(pgd["ensemble_robust_accuracy"], 1e-9)
    emit(
        {
            "check": "fast-AT robust accuracy / PGD-AT's",
            "value": round(share, 3),
            "target": ">= 0.9",
            "pass": fast["ensemble_robust_accuracy"] >= 0.9 * pgd["ensemble_robust_accuracy"],
        }
    )
    emit(
        {
            "info": "fast-AT with Wong et al.'s random start, robust accuracy / PGD-AT's",
            "value": round(
                results["fast-at-random"]["ensemble_robust_accuracy"] / max(pgd["ensemble_robust_accuracy"], 1e-9), 3
            ),
        }
    )
    emit(
        {
            "check": "fast-AT time / PGD-AT time",
            "value": round(fast["seconds"] / pgd["seconds"], 3),
            "target": "<= 0.35",
            "pass": fast["seconds"] <= 0.35 * pgd["seconds"],
        }
    )


if __name__ == "__main__":
    main()
