#!/usr/bin/env python
"""Model extraction, the issue-15 numbers that have no peer to run beside: equation solving, Jacobian augmentation
against the guard's PRADA, transferability from a stolen copy, and the guard's output policies against Knockoff.

Sections (``--only`` picks some; one JSON line per measurement, ``--out FILE`` appends them):

- ``equation``: Tramèr et al.'s equation solving on the zoo ``cancer-logreg`` (breast-cancer, 30 features,
  logistic) and ``digits-logreg`` (64 features, softmax): queries (must be d + 1), fidelity on the test split,
  and the parameter error against the closed form (the composed affine map; softmax rows relative to class 0, the
  identifiable part): ``||theta~ - theta|| / ||theta||`` and the largest element-wise error over ``max |theta|``.
- ``jacobian``: Papernot et al.'s augmentation on ``mnist-cnn`` from 150 seed images (training split), mnist-cnn
  substitute, 6 rounds, lambda 0.1: fidelity after each round and the queries; then the query stream the attack
  sent, replayed in order through the guard's PRADA monitor (default ``[extraction]`` settings): the query at which
  the client is flagged. The same replay for a Knockoff thief (natural images) as the benign-looking contrast.
- ``transfer``: PGD (Linf, 40 steps) crafted on a Knockoff copy (4,000 queries) against the victim, at eps 0.1 /
  0.2 / 0.3 on the 1,000 test images, beside uniform sign noise of the same size.
- ``defences``: every output policy of the guard (``[output]`` in guard.toml) in front of mnist-cnn, Knockoff at
  250 / 1,000 / 4,000 queries (``--defence-budgets``; 4,000 is the pool's size) with probabilities and with labels
  only: fidelity at each budget and accuracy of the copy, and
  the policy's utility cost on the test images (label agreement, mean L1 change, ECE and NLL change). The
  prediction-poisoning surrogate is a freshly initialised mnist-cnn (the defender does not know the thief's).

    python benchmarks/extraction_eval.py --threads 1 --out extraction.jsonl
    python benchmarks/extraction_eval.py --only equation,jacobian
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch
from torch import Tensor

from bastion import metrics
from bastion.attacks.extraction import EquationSolving, JacobianAugmentation, KnockoffNets, transferability
from bastion.data import load_dataset
from bastion.defenses.extraction import PolicyClassifier, get_output_policy, utility_cost
from bastion.models.architectures import build_architecture
from bastion.models.base import Classifier
from bastion.models.wrapped import WrappedClassifier
from bastion.models.zoo import load_zoo
from bastion.serve.config import ExtractionConfig
from bastion.serve.extraction import queries_until_flagged

warnings.filterwarnings("ignore")
OUT: list[str] = []


def emit(obj: dict) -> None:
    line = json.dumps(obj)
    OUT.append(line)
    print(line, flush=True)


class Recorder(WrappedClassifier):
    """The victim, keeping every input it is asked about, in order (the stream PRADA would see)."""

    def __init__(self, victim: Classifier) -> None:
        super().__init__(victim)
        self.seen: list[Tensor] = []

    def _scores(self, x: Tensor) -> Tensor:
        self.seen.append(x.detach().clone())
        return self.wrapped.logits(x)


def _theta(weight: Tensor, bias: Tensor) -> Tensor:
    theta = torch.cat([weight, bias[:, None]], dim=1).double()
    return theta if theta.shape[0] == 1 else theta - theta[:1]


def equation() -> None:
    for name, data_name in (("cancer-logreg", "breast-cancer"), ("digits-logreg", "digits")):
        victim, data = load_zoo(name), load_dataset(data_name)
        d = int(torch.tensor(data.input_shape).prod())
        result = EquationSolving().extract(victim, 10_000, eval_x=data.x_test, eval_y=data.y_test)
        truth, stolen = _theta(*victim.module.affine()), _theta(*result.stolen.module.affine())
        emit(
            {
                "section": "equation",
                "victim": name,
                "d": d,
                "queries": result.queries,
                "d_plus_1": d + 1,
                "fidelity": result.fidelity,
                "accuracy": result.accuracy,
                "victim_accuracy": result.extra["victim_accuracy"],
                "relative_error": float((stolen - truth).norm() / truth.norm()),
                "max_elementwise_error_over_max": float((stolen - truth).abs().max() / truth.abs().max()),
                "seconds": round(result.seconds, 3),
            }
        )


def _knockoff(victim: Classifier, data, labels_only: bool, budget: int = 4000, epochs: int = 10, checkpoints=None):
    attack = KnockoffNets(pool=data.x_train, copy="mnist-cnn", labels_only=labels_only, epochs=epochs, seed=0)
    return attack.extract(victim, budget, eval_x=data.x_test, eval_y=data.y_test, checkpoints=checkpoints)


def jacobian(victim: Classifier, data) -> None:
    recorder = Recorder(victim)
    attack = JacobianAugmentation(seed_set=data.x_train, n_seed=150, copy="mnist-cnn", rounds=6, seed=0)
    result = attack.extract(recorder, 150 * 2**6, eval_x=data.x_test, eval_y=data.y_test)
    stream = torch.cat(recorder.seen)[-result.queries :]  # the attack's queries (the eval answers came first)
    flagged = queries_until_flagged(ExtractionConfig(), stream, victim.predict)
    emit(
        {
            "section": "jacobian",
            "victim": "zoo:mnist-cnn",
            "n_seed": 150,
            "queries": result.queries,
            "curve": [p._asdict() for p in result.curve],
            "fidelity": result.fidelity,
            "prada_flagged_at_query": flagged,
            "seconds": round(result.seconds, 1),
        }
    )
    recorder = Recorder(victim)
    ko = _knockoff(recorder, data, labels_only=False, budget=1000, epochs=1)
    stream = torch.cat(recorder.seen)[-ko.queries :]
    emit(
        {
            "section": "jacobian",
            "contrast": "knockoff (natural images) replayed through PRADA",
            "queries": ko.queries,
            "prada_flagged_at_query": queries_until_flagged(ExtractionConfig(), stream, victim.predict),
        }
    )


def transfer(victim: Classifier, data) -> None:
    copy = _knockoff(victim, data, labels_only=False)
    for eps in (0.1, 0.2, 0.3):
        r = transferability(victim, copy.stolen, data.x_test, data.y_test, eps)
        emit({"section": "transfer", "copy_fidelity": copy.fidelity, "eps": eps, **r})


def _policies(seed: int = 0) -> list[tuple[str, dict]]:
    module, _ = build_architecture("mnist-cnn")  # the defender's stand-in for the thief's model, untrained
    return [
        ("none", {}),
        ("round", {"decimals": 1}),
        ("top-k", {"k": 1}),
        ("label-only", {}),
        ("reverse-sigmoid", {"beta": 0.7, "gamma": 0.4}),
        ("prediction-poisoning", {"epsilon": 1.0, "surrogate": module}),
    ]


def defences(victim: Classifier, data, budgets: list[int]) -> None:
    probs = victim.logits(data.x_test).softmax(1)
    for name, params in _policies():
        policy = get_output_policy(name, **params)
        cost = utility_cost(policy, probs, data.y_test, x=data.x_test)
        defended = PolicyClassifier(victim, policy)
        row = {"section": "defences", "policy": name, "params": {k: v for k, v in params.items() if k != "surrogate"}}
        row["utility"] = {k: cost[k] for k in ("label_agreement", "l1", "ece_change", "nll_change")}
        for labels_only in (False, True):
            if labels_only is False and not policy.returns_probabilities:
                continue  # a label-only answer: only the label-only thief applies
            start = time.perf_counter()
            r = _knockoff(defended, data, labels_only=labels_only, budget=budgets[-1], checkpoints=budgets)
            mode = "labels" if labels_only else "probabilities"
            row[mode] = {f"fidelity@{p.queries}": p.fidelity for p in r.curve}
            row[mode] |= {"accuracy": r.accuracy, "seconds": round(time.perf_counter() - start)}
        emit(row)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="equation,jacobian,transfer,defences")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--defence-budgets", default="250,1000,4000", help="the defences' Knockoff checkpoints")
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    only = set(args.only.split(","))
    if "equation" in only:
        equation()
    victim, data = load_zoo("mnist-cnn"), load_dataset("mnist5k")
    emit({"victim": "zoo:mnist-cnn", "victim_accuracy": metrics.accuracy(victim.predict(data.x_test), data.y_test)})
    if "jacobian" in only:
        jacobian(victim, data)
    if "transfer" in only:
        transfer(victim, data)
    if "defences" in only:
        defences(victim, data, [int(b) for b in args.defence_budgets.split(",")])
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(OUT) + "\n")


if __name__ == "__main__":
    main()
