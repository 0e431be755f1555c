#!/usr/bin/env python
"""Side-by-side evasion benchmark: bastion vs a bare torch loop, torchattacks, ART and Foolbox.

Same model (zoo:mnist-cnn), same images (the first --n mnist5k test images), same settings, same
process; runs are interleaved over --repeats rounds and the median time is reported, because
these machines are noisy — compare the ratios, not the absolute seconds.

Prints one JSON line per library and attack ({"library", "attack", "seconds", "robust_accuracy",
...}) and then one JSON line per ratio the project tracks, with the target it must meet.

    python benchmarks/evasion_peers.py                # everything (make bench)
    python benchmarks/evasion_peers.py --only pgd     # one section: pgd, strength, cw, deepfool
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

import bastion
from bastion.attacks.evasion.pgd import PGD

warnings.filterwarnings("ignore")
RESULTS: dict[tuple[str, str], list[dict]] = defaultdict(list)


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def record(library: str, attack: str, seconds: float, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor,
           model, **extra) -> dict:
    with torch.no_grad():
        pred = model.predict(torch.as_tensor(x_adv, dtype=torch.float32))
    x_adv = torch.as_tensor(x_adv, dtype=torch.float32)
    row = {"library": library, "attack": attack, "n": int(x.shape[0]), "seconds": round(seconds, 3),
           "robust_accuracy": round(float((pred == y).float().mean()), 4),
           "linf_max": round(float((x_adv - x).abs().amax()), 6), **extra}
    RESULTS[(library, attack)].append({**row, "_x_adv": x_adv, "_pred": pred})
    return row


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def median_row(library: str, attack: str) -> dict:
    rows = RESULTS[(library, attack)]
    out = {k: v for k, v in rows[-1].items() if not k.startswith("_")}
    out["seconds"] = round(statistics.median(r["seconds"] for r in rows), 3)
    out["runs"] = len(rows)
    return out


def ratio(name: str, num: float, den: float, target: str) -> None:
    emit({"ratio": name, "value": round(num / den, 3) if den else None, "target": target})


# --------------------------------------------------------------------------------------- PGD
def bare_pgd(module, x, y, eps, alpha, steps, generator):
    """The practical limit: forward, loss, autograd.grad on the input, sign step, projection."""
    xa = (x + (2 * torch.rand(x.shape, generator=generator) - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        xa.requires_grad_(True)
        loss = F.cross_entropy(module(xa), y)
        (g,) = torch.autograd.grad(loss, xa)
        xa = xa.detach() + alpha * g.sign()
        xa = torch.min(torch.max(xa, x - eps), x + eps).clamp(0, 1)
    return xa


def peers_available() -> dict[str, bool]:
    out = {}
    for name in ("torchattacks", "art", "foolbox"):
        try:
            __import__(name)
            out[name] = True
        except Exception:  # noqa: BLE001 - report, don't crash
            out[name] = False
    return out


def art_classifier(module, n_classes=10, shape=(1, 28, 28)):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=module, loss=torch.nn.CrossEntropyLoss(), input_shape=shape, nb_classes=n_classes,
                             clip_values=(0.0, 1.0), device_type="cpu")


def section_pgd(model, x, y, repeats: int, have: dict[str, bool]) -> None:
    eps, alpha, steps = 0.3, 0.01, 40
    module = model.module
    runners: dict[str, Callable[[], object]] = {
        "bare-loop": lambda: bare_pgd(module, x, y, eps, alpha, steps, torch.Generator().manual_seed(0)),
        "bastion-fixed": lambda: PGD(eps=eps, steps=steps, step_size=alpha, early_stop=False)(model, x, y).x_adv,
        "bastion-eval": lambda: PGD(eps=eps, steps=steps, step_size=alpha, early_stop=True)(model, x, y).x_adv,
    }
    if have["torchattacks"]:
        import torchattacks

        ta = torchattacks.PGD(module, eps=eps, alpha=alpha, steps=steps, random_start=True)
        runners["torchattacks"] = lambda: ta(x, y)
    if have["art"]:
        from art.attacks.evasion import ProjectedGradientDescent

        art_pgd = ProjectedGradientDescent(art_classifier(module), norm=np.inf, eps=eps, eps_step=alpha, max_iter=steps,
                                           num_random_init=1, batch_size=x.shape[0], verbose=False)
        xn, yn = x.numpy(), y.numpy()
        runners["art"] = lambda: art_pgd.generate(xn, yn)
    if have["foolbox"]:
        import foolbox as fb

        fmodel = fb.PyTorchModel(module, bounds=(0, 1))
        fpgd = fb.attacks.LinfPGD(abs_stepsize=alpha, steps=steps, random_start=True)
        runners["foolbox"] = lambda: fpgd(fmodel, x, y, epsilons=eps)[1]
    for _ in range(repeats):
        for lib, fn in runners.items():
            with torch.enable_grad():
                out, sec = timed(fn)
            record(lib, "pgd40-linf-0.3", sec, x, y, out, model)
    for lib in runners:
        emit(median_row(lib, "pgd40-linf-0.3"))
    sec = {lib: median_row(lib, "pgd40-linf-0.3")["seconds"] for lib in runners}
    acc = {lib: median_row(lib, "pgd40-linf-0.3")["robust_accuracy"] for lib in runners}
    ratio("pgd40 bastion-fixed / bare-loop (time)", sec["bastion-fixed"], sec["bare-loop"], "<= 1.10")
    if "torchattacks" in sec:
        ratio("pgd40 bastion-eval / torchattacks (time)", sec["bastion-eval"], sec["torchattacks"], "<= 0.5")
        emit({"check": "pgd40 |bastion-fixed - torchattacks| robust acc (points)",
              "value": round(100 * abs(acc["bastion-fixed"] - acc["torchattacks"]), 2), "target": "<= 1"})
    if "art" in sec:
        ratio("pgd40 bastion-eval / art (time)", sec["bastion-eval"], sec["art"], "<= 0.333")
        emit({"check": "pgd40 |bastion-fixed - art| robust acc (points)",
              "value": round(100 * abs(acc["bastion-fixed"] - acc["art"]), 2), "target": "<= 1"})
    emit({"check": "pgd40 bastion-eval robust acc <= every peer's", "value": acc["bastion-eval"],
          "peers": {k: v for k, v in acc.items() if not k.startswith("bastion")}, "target": "<= min(peers)"})
    emit({"check": "pgd40 bastion robust acc at eps=0.3", "value": acc["bastion-eval"], "target": "<= 0.01"})


SECTIONS = {"pgd": section_pgd}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="number of mnist5k test images")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds per section")
    ap.add_argument("--only", default="", help="comma-separated sections: " + ", ".join(SECTIONS))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = bastion.models.load_zoo("mnist-cnn")
    data = bastion.load_dataset("mnist5k")
    x, y = data.x_test[: args.n].contiguous(), data.y_test[: args.n].contiguous()
    have = peers_available()
    emit({"machine": {"threads": torch.get_num_threads(), "torch": torch.__version__, "peers": have,
                      "clean_accuracy": float((model.predict(x) == y).float().mean())}})
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    for name in chosen:
        if name not in SECTIONS:
            raise SystemExit(f"unknown section {name!r}: choose from {', '.join(SECTIONS)}")
        SECTIONS[name](model, x, y, args.repeats, have)


if __name__ == "__main__":
    main()
