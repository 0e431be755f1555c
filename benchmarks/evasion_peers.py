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


def record(
    library: str, attack: str, seconds: float, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, model, **extra
) -> dict:
    with torch.no_grad():
        pred = model.predict(torch.as_tensor(x_adv, dtype=torch.float32))
    x_adv = torch.as_tensor(x_adv, dtype=torch.float32)
    row = {
        "library": library,
        "attack": attack,
        "n": int(x.shape[0]),
        "seconds": round(seconds, 3),
        "robust_accuracy": round(float((pred == y).float().mean()), 4),
        "linf_max": round(float((x_adv - x).abs().amax()), 6),
        **extra,
    }
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
        except Exception:
            out[name] = False
    return out


def art_classifier(module, n_classes=10, shape=(1, 28, 28)):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=module,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=shape,
        nb_classes=n_classes,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )


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

        art_pgd = ProjectedGradientDescent(
            art_classifier(module),
            norm=np.inf,
            eps=eps,
            eps_step=alpha,
            max_iter=steps,
            num_random_init=1,
            batch_size=x.shape[0],
            verbose=False,
        )
        xn, yn = x.numpy(), y.numpy()
        runners["art"] = lambda: art_pgd.generate(xn, yn)
    if have["foolbox"]:
        import foolbox as fb

        fmodel = fb.PyTorchModel(module, bounds=(0, 1), device="cpu")  # foolbox moves the model to a GPU it sees
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
        emit(
            {
                "check": "pgd40 |bastion-fixed - torchattacks| robust acc (points)",
                "value": round(100 * abs(acc["bastion-fixed"] - acc["torchattacks"]), 2),
                "target": "<= 1",
            }
        )
    if "art" in sec:
        ratio("pgd40 bastion-eval / art (time)", sec["bastion-eval"], sec["art"], "<= 0.333")
        emit(
            {
                "check": "pgd40 |bastion-fixed - art| robust acc (points)",
                "value": round(100 * abs(acc["bastion-fixed"] - acc["art"]), 2),
                "target": "<= 1",
            }
        )
    emit(
        {
            "check": "pgd40 bastion-eval robust acc <= every peer's",
            "value": acc["bastion-eval"],
            "peers": {k: v for k, v in acc.items() if not k.startswith("bastion")},
            "target": "<= min(peers)",
        }
    )
    emit({"check": "pgd40 bastion robust acc at eps=0.3", "value": acc["bastion-eval"], "target": "<= 0.01"})
    # at eps=0.3 every library reaches 0%: compare accuracy where it discriminates too (eps=0.1)
    acc01 = {
        "bastion-fixed": PGD(eps=0.1, steps=steps, step_size=alpha, early_stop=False)(model, x, y).robust_accuracy,
        "bastion-eval": PGD(eps=0.1, steps=steps, step_size=alpha)(model, x, y).robust_accuracy,
    }
    if have["torchattacks"]:
        import torchattacks

        adv = torchattacks.PGD(module, eps=0.1, alpha=alpha, steps=steps, random_start=True)(x, y)
        acc01["torchattacks"] = float((model.predict(adv) == y).float().mean())
    if have["art"]:
        from art.attacks.evasion import ProjectedGradientDescent

        adv = ProjectedGradientDescent(
            art_classifier(module),
            norm=np.inf,
            eps=0.1,
            eps_step=alpha,
            max_iter=steps,
            num_random_init=1,
            batch_size=x.shape[0],
            verbose=False,
        ).generate(x.numpy(), y.numpy())
        acc01["art"] = float((model.predict(torch.as_tensor(adv)) == y).float().mean())
    emit(
        {
            "check": "pgd40 robust accuracy at eps=0.1, identical settings",
            "value": acc01,
            "max_gap_points_vs_bastion_fixed": round(
                100 * max(abs(v - acc01["bastion-fixed"]) for v in acc01.values()), 2
            ),
            "target": "<= 1 point",
        }
    )


# ---------------------------------------------------------------------------------- strength
def section_strength(model, x, y, repeats: int, have: dict[str, bool]) -> None:
    """APGD-CE must not be weaker than PGD-40 at eps=0.1, the ensemble no weaker than any member."""
    from bastion.attacks.evasion.apgd import APGD, APGDDLR, APGDT
    from bastion.attacks.evasion.ensemble import Ensemble

    eps = 0.1
    attacks = {
        "pgd40": PGD(eps=eps, steps=40, step_size=0.01),
        "apgd-ce": APGD(eps=eps),
        "apgd-dlr": APGDDLR(eps=eps),
        "apgd-t": APGDT(eps=eps),
        "ensemble": Ensemble(eps=eps),
    }
    acc = {}
    for name, atk in attacks.items():
        r = atk(model, x, y)
        acc[name] = r.robust_accuracy
        row = {
            "library": "bastion",
            "attack": f"{name}-linf-0.1",
            "n": int(x.shape[0]),
            "seconds": round(r.seconds, 2),
            "robust_accuracy": round(r.robust_accuracy, 4),
            "gradients": r.gradients,
        }
        if "robust_accuracy_after" in r.extra:
            row["robust_accuracy_after"] = r.extra["robust_accuracy_after"]
        emit(row)
    emit(
        {
            "check": "apgd-ce robust acc <= pgd40 (eps=0.1)",
            "value": acc["apgd-ce"],
            "pgd40": acc["pgd40"],
            "pass": acc["apgd-ce"] <= acc["pgd40"],
        }
    )
    members = {k: v for k, v in acc.items() if k in ("apgd-ce", "apgd-t")}
    emit(
        {
            "check": "ensemble robust acc <= every member run alone (eps=0.1)",
            "value": acc["ensemble"],
            "members": members,
            "pass": all(acc["ensemble"] <= v for v in members.values()),
        }
    )


# --------------------------------------------------------------------- minimum-norm attacks
def _min_norm_rows(name: str, model, x, y, advs: dict[str, tuple[torch.Tensor, float]]) -> None:
    """Success = misclassified and actually produced by the attack (Foolbox's C&W returns an all-zero
    image where it fails, which a model may misclassify: that is not counted). Median L2 / Linf over
    the images every library succeeds on."""
    clean_ok = model.predict(x) == y
    ok, l2, linf = {}, {}, {}
    for lib, (adv, sec) in advs.items():
        adv = torch.as_tensor(adv, dtype=torch.float32)
        pred = model.predict(adv)
        flat = (adv - x).flatten(1)
        fallback = adv.flatten(1).abs().amax(1) == 0
        ok[lib] = clean_ok & (pred != y) & ~fallback
        l2[lib], linf[lib] = flat.norm(dim=1), flat.abs().amax(1)
        emit(
            {
                "library": lib,
                "attack": name,
                "n": int(x.shape[0]),
                "seconds": round(sec, 2),
                "success": int(ok[lib].sum()),
                "clean_correct": int(clean_ok.sum()),
                "median_l2_own_successes": round(float(l2[lib][ok[lib]].median()), 4) if bool(ok[lib].any()) else None,
            }
        )
    ours = next(k for k in advs if k.startswith("bastion"))
    for lib in advs:
        if lib == ours:
            continue
        common = ok[ours] & ok[lib]  # pairwise: images both succeed on
        emit(
            {
                "check": f"{name}: bastion successes >= {lib}",
                "value": int(ok[ours].sum()),
                "peer": int(ok[lib].sum()),
                "pass": int(ok[ours].sum()) >= int(ok[lib].sum()),
            }
        )
        if bool(common.any()):
            norm = linf if "linf" in name else l2
            emit(
                {
                    "attack": name,
                    "peer": lib,
                    "common_successes": int(common.sum()),
                    "median_norm_common": {
                        ours: round(float(norm[ours][common].median()), 4),
                        lib: round(float(norm[lib][common].median()), 4),
                    },
                }
            )
            ratio(
                f"{name}: median norm bastion / {lib} (common successes)",
                float(norm[ours][common].median()),
                float(norm[lib][common].median()),
                "<= 1.10",
            )
        target = "<= 0.1" if (name.startswith("cw") and lib == "art") else "reported"
        ratio(f"{name}: time bastion / {lib}", advs[ours][1], advs[lib][1], target)


def section_cw(model, x, y, repeats: int, have: dict[str, bool], n: int = 200) -> None:
    from bastion.attacks.evasion.cw import CarliniWagnerL2

    x, y = x[:n], y[:n]
    bss, steps, lr, c0 = 5, 100, 0.1, 1e-2  # bastion's defaults, given to every library
    advs: dict[str, tuple[torch.Tensor, float]] = {}
    r = CarliniWagnerL2(binary_search_steps=bss, max_iterations=steps, learning_rate=lr, initial_const=c0)(model, x, y)
    advs["bastion"] = (r.x_adv, r.seconds)
    if have["foolbox"]:
        import foolbox as fb

        a = fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=bss, steps=steps, stepsize=lr, confidence=0, initial_const=c0, abort_early=True
        )
        fm = fb.PyTorchModel(model.module, bounds=(0, 1), device="cpu")
        out, sec = timed(lambda a=a, fm=fm: a(fm, x, y, epsilons=None)[1])
        advs["foolbox"] = (out, sec)
    if have["art"]:
        from art.attacks.evasion import CarliniL2Method

        a = CarliniL2Method(
            art_classifier(model.module),
            confidence=0.0,
            targeted=False,
            learning_rate=lr,
            binary_search_steps=bss,
            max_iter=steps,
            initial_const=c0,
            batch_size=x.shape[0],
            verbose=False,
        )
        out, sec = timed(lambda a=a: a.generate(x.numpy(), y=y.numpy()))
        advs["art"] = (torch.as_tensor(out), sec)
    _min_norm_rows(f"cw-l2 ({bss}x{steps}, lr {lr}, c0 {c0})", model, x, y, advs)


def section_deepfool(model, x, y, repeats: int, have: dict[str, bool], n: int = 1000) -> None:
    from bastion.attacks.evasion.deepfool import DeepFool

    x, y = x[:n], y[:n]
    steps, overshoot, cands = 50, 0.02, 10
    for norm in ("l2", "linf"):
        advs: dict[str, tuple[torch.Tensor, float]] = {}
        r = DeepFool(norm=norm, steps=steps, candidates=cands, overshoot=overshoot)(model, x, y)
        advs["bastion"] = (r.x_adv, r.seconds)
        if have["foolbox"]:
            import foolbox as fb

            cls = fb.attacks.L2DeepFoolAttack if norm == "l2" else fb.attacks.LinfDeepFoolAttack
            a = cls(steps=steps, candidates=cands, overshoot=overshoot)
            fm = fb.PyTorchModel(model.module, bounds=(0, 1), device="cpu")
            out, sec = timed(lambda a=a, fm=fm: a(fm, x, y, epsilons=None)[1])
            advs["foolbox"] = (out, sec)
        if have["art"] and norm == "l2":  # ART's DeepFool is L2 only
            from art.attacks.evasion import DeepFool as ArtDeepFool

            a = ArtDeepFool(
                art_classifier(model.module),
                max_iter=steps,
                epsilon=overshoot,
                nb_grads=cands,
                batch_size=x.shape[0],
                verbose=False,
            )
            out, sec = timed(lambda a=a: a.generate(x.numpy(), y=y.numpy()))
            advs["art"] = (torch.as_tensor(out), sec)
        _min_norm_rows(f"deepfool-{norm} ({steps} steps)", model, x, y, advs)


SECTIONS = {"pgd": section_pgd, "strength": section_strength, "cw": section_cw, "deepfool": section_deepfool}


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
    emit(
        {
            "machine": {
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "peers": have,
                "clean_accuracy": float((model.predict(x) == y).float().mean()),
            }
        }
    )
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    for name in chosen:
        if name not in SECTIONS:
            raise SystemExit(f"unknown section {name!r}: choose from {', '.join(SECTIONS)}")
        SECTIONS[name](model, x, y, args.repeats, have)


if __name__ == "__main__":
    main()
