#!/usr/bin/env python
"""Membership inference side by side: bastion's LiRA, RMIA, shadow-model and loss attacks vs IBM ART's.

Issue 14: on a deliberately overfit target with 16 reference models, LiRA online's TPR at 0.1 % FPR must be at
least 10x the loss-threshold attack's and its AUC at least the loss attack's; RMIA with 2 reference models must at
least match LiRA offline with the same 2 at TPR@1 %FPR; and bastion must beat ART's ``MembershipInferenceBlackBox``
and its shadow-model attack on the same target at TPR@1 %FPR.

The game (Carlini et al. 2022): a population of 2N records drawn (seeded) from the data, the target trained with the
architecture's zoo recipe on a random half, K reference models on other random halves (bastion's
``membership_game``). ART's black-box attack is supervised: it is given the target's outputs on a random half of the
population with their true membership (an attacker advantage bastion's attacks do not get) and every attack is
scored on the other half. ART's shadow-model attack trains ``--art-shadows`` shadow copies (ART's ``ShadowModels``
with the same architecture, epochs and optimiser) on records outside the population, then fits its attack model on
their outputs. One JSON line per attack, then the checks.

    python benchmarks/privacy_peers.py                                  # mnist-cnn on 1,000 mnist5k images, 16 refs
    python benchmarks/privacy_peers.py --arch digits-mlp --data digits --train-size 800 --skip-art
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import warnings

import numpy as np
import torch

from bastion.attacks.inference.membership import (
    Recipe,
    ReferenceModels,
    evaluate_membership,
    get_membership_attack,
    membership_game,
)
from bastion.data import load_dataset

warnings.filterwarnings("ignore")


def _subset(refs: ReferenceModels, k: int) -> ReferenceModels:
    return dataclasses.replace(
        refs, keep=refs.keep[:k], logits=refs.logits[:k], seconds=refs.seconds[:k], cached=refs.cached[:k]
    )


def _row(name: str, scores: np.ndarray, member: np.ndarray, seconds: float, **extra: object) -> dict:
    r = evaluate_membership(scores, member)
    return {
        "attack": name,
        "auc": r["auc"],
        "tpr@0.1%": r["tpr_at_fpr"]["0.001"],
        "tpr@1%": r["tpr_at_fpr"]["0.01"],
        "balanced_accuracy": r["balanced_accuracy"],
        "seconds": round(seconds, 2),
        **extra,
    }


def bastion_rows(setup, eval_idx: np.ndarray) -> list[dict]:
    y = setup.population.y_train
    member = setup.is_member.numpy()[eval_idx]
    rows = []
    plans = [
        ("loss", None),
        ("lira", None),
        ("lira-offline", None),
        ("rmia", None),
        ("shadow", None),
        ("lira-offline", 2),
        ("rmia", 2),
    ]
    for name, k in plans:
        refs = setup.references if k is None else _subset(setup.references, k)
        start = time.perf_counter()
        attack = get_membership_attack(name).fit(refs if attack_needs(name) else None)
        s = attack.score_from(setup.target_scores, y, output=setup.target.output).numpy()
        label = f"bastion {name}" + (f" [{k} refs]" if k else "")
        rows.append(
            _row(
                label, s[eval_idx], member, time.perf_counter() - start, references=refs.k if attack_needs(name) else 0
            )
        )
    return rows


def attack_needs(name: str) -> bool:
    return get_membership_attack(name).needs_references


def art_rows(setup, eval_idx: np.ndarray, fit_idx: np.ndarray, data, args) -> list[dict]:
    from art.attacks.inference.membership_inference import MembershipInferenceBlackBox
    from art.estimators.classification import PyTorchClassifier

    pop = setup.population
    x, y = pop.x_train.numpy(), pop.y_train.numpy()
    member = setup.is_member.numpy()
    module = setup.target.module
    est = PyTorchClassifier(
        model=module,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=tuple(pop.input_shape),
        nb_classes=pop.n_classes,
        clip_values=pop.bounds,
    )
    rows = []
    for kind in ("rf", "gb", "nn"):
        start = time.perf_counter()
        mi = MembershipInferenceBlackBox(est, attack_model_type=kind)
        fm, fn = fit_idx[member[fit_idx]], fit_idx[~member[fit_idx]]
        mi.fit(x[fm], y[fm], x[fn], y[fn])
        s = mi.infer(x[eval_idx], y[eval_idx], probabilities=True).reshape(-1)
        rows.append(
            _row(
                f"ART black-box ({kind})",
                s,
                member[eval_idx],
                time.perf_counter() - start,
                knows_membership_of=len(fit_idx),
            )
        )
    rows.append(art_shadow_row(est, setup, eval_idx, data, args))
    return rows


def art_shadow_row(est, setup, eval_idx: np.ndarray, data, args) -> dict:
    from art.attacks.inference.membership_inference import MembershipInferenceBlackBox
    from art.attacks.inference.membership_inference.shadow_models import ShadowModels
    from art.estimators.classification import PyTorchClassifier

    from bastion.models.architectures import build_architecture
    from bastion.models.training import TRAIN_CONFIGS

    pop = setup.population
    # shadow data: records of the data outside the population
    xs = torch.cat([data.x_train, data.x_test]).numpy()
    ys = torch.cat([data.y_train, data.y_test]).numpy()
    in_pop = {r.tobytes() for r in pop.x_train.numpy()}  # the population's records, byte for byte
    keep = np.array([r.tobytes() not in in_pop for r in xs])
    xs, ys = xs[keep], ys[keep]
    torch.manual_seed(args.seed)
    module, _ = build_architecture(args.arch)
    cfg = TRAIN_CONFIGS[args.arch]
    template = PyTorchClassifier(
        model=module,
        loss=torch.nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(module.parameters(), lr=cfg.lr),
        input_shape=tuple(pop.input_shape),
        nb_classes=pop.n_classes,
        clip_values=pop.bounds,
    )
    start = time.perf_counter()
    shadows = ShadowModels(template, num_shadow_models=args.art_shadows, random_state=args.seed)
    n_shadow = min(xs.shape[0], 2 * args.train_size * args.art_shadows)
    (mx, my, mp), (nx, ny, np_) = shadows.generate_shadow_dataset(xs[:n_shadow], ys[:n_shadow], member_ratio=0.5)
    mi = MembershipInferenceBlackBox(est, attack_model_type="rf")
    mi.fit(mx, my, nx, ny, mp, np_)
    x, y = pop.x_train.numpy(), pop.y_train.numpy()
    s = mi.infer(x[eval_idx], y[eval_idx], probabilities=True).reshape(-1)
    return _row(
        f"ART shadow models ({args.art_shadows}, rf)",
        s,
        setup.is_member.numpy()[eval_idx],
        time.perf_counter() - start,
        shadow_records=int(n_shadow),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="mnist-cnn")
    ap.add_argument("--data", default="mnist5k")
    ap.add_argument("--train-size", type=int, default=1000)
    ap.add_argument("--references", type=int, default=16)
    ap.add_argument("--art-shadows", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-art", action="store_true")
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.data)
    start = time.perf_counter()
    setup = membership_game(
        data, Recipe(arch=args.arch), train_size=args.train_size, references=args.references, seed=args.seed
    )
    lines = [
        {
            "machine": {"threads": args.threads, "torch": torch.__version__},
            "arch": args.arch,
            "data": args.data,
            "train_size": args.train_size,
            "references": args.references,
            "train_accuracy": setup.train_accuracy,
            "test_accuracy": setup.test_accuracy,
            "target_seconds": round(setup.seconds["target"], 2),
            "reference_seconds": [round(s, 2) for s in setup.references.seconds],
            "cached_references": sum(setup.references.cached),
            "setup_seconds": round(time.perf_counter() - start, 1),
        }
    ]
    n = setup.population.x_train.shape[0]
    perm = np.random.default_rng(args.seed).permutation(n)
    fit_idx, eval_idx = np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])
    rows = bastion_rows(setup, eval_idx) + ([] if args.skip_art else art_rows(setup, eval_idx, fit_idx, data, args))
    lines += rows
    by = {r["attack"]: r for r in rows}
    loss, lira = by["bastion loss"], by["bastion lira"]
    checks = {
        "lira_tpr@0.1%_over_loss": lira["tpr@0.1%"] / loss["tpr@0.1%"] if loss["tpr@0.1%"] else None,
        "lira_tpr@0.1%_at_least_10x_loss": lira["tpr@0.1%"] >= 10 * loss["tpr@0.1%"] and lira["tpr@0.1%"] > 0,
        "lira_auc_at_least_loss": lira["auc"] >= loss["auc"],
        "rmia2_matches_lira_offline2_at_1%": by["bastion rmia [2 refs]"]["tpr@1%"]
        >= by["bastion lira-offline [2 refs]"]["tpr@1%"],
    }
    if not args.skip_art:
        best_art = max(r["tpr@1%"] for r in rows if r["attack"].startswith("ART"))
        best_bastion = max(r["tpr@1%"] for r in rows if r["attack"].startswith("bastion"))
        checks.update(
            best_art_tpr_at_1pct=best_art,
            best_bastion_tpr_at_1pct=best_bastion,
            bastion_beats_art_at_1pct=best_bastion > best_art,
        )
    lines.append({"checks": checks})
    for line in lines:
        print(json.dumps(line))
    if args.out:
        with open(args.out, "a") as f:
            for line in lines:
                f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
