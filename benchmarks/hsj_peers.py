#!/usr/bin/env python
"""Decision-based benchmark: bastion's HopSkipJump-L2 vs ART's, at the same query budget, with bastion's
white-box C&W-L2 (defaults) as the yardstick for the perturbation size.

Same model (zoo:mnist-cnn), same images (the first --n mnist5k test images), same process. ART's budget
is in iterations: its queries are counted through a wrapper around its classifier's ``predict`` (the
attack's own calls only; ART's bookkeeping predictions on the clean and final inputs are excluded) and
its ``max_iter`` is chosen (--art-iters) so that the mean per image is about --queries. ART's
HopSkipJump interpolates in float64, which a float32 torch model rejects, so the wrapper also casts
every query to float32 (the cast is included in ART's time).

Prints one JSON line per library ({"library", "attack", "seconds", "success", "median_l2", ...}) and then
the checks the project tracks, with their targets. These machines are noisy: compare ratios.

    python benchmarks/hsj_peers.py                     # 200 images, 5000 queries per image
    python benchmarks/hsj_peers.py --n 50 --art-iters 0  # skip ART

Also printed: bastion at smaller budgets (--budgets), the equal-quality comparison. At the same budget on
a CPU both libraries spend most of their time in the model's forward passes (model_forward_floor_seconds):
the ratio there cannot exceed ART's time over that floor.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch

import bastion
from bastion.attacks.evasion.cw import CarliniWagnerL2
from bastion.attacks.evasion.hopskipjump import HopSkipJump

warnings.filterwarnings("ignore")


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def art_hsj(model, x: torch.Tensor, y: torch.Tensor, iters: int, init_eval: int, max_eval: int):
    """ART's HopSkipJump-L2, untargeted; returns (x_adv, seconds, attack queries per image (N,))."""
    from art.attacks.evasion import HopSkipJump as ArtHopSkipJump
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(
        model=model.module,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(1, 28, 28),
        nb_classes=10,
        clip_values=(np.float32(0.0), np.float32(1.0)),
        device_type="cpu",
    )
    inner = clf.predict
    counter = {"on": False, "n": 0}

    def predict(xs, batch_size=128, **kw):
        if counter["on"]:
            counter["n"] += len(xs)
        return inner(np.asarray(xs, dtype=np.float32), batch_size=batch_size, **kw)

    clf.predict = predict  # type: ignore[method-assign]
    atk = ArtHopSkipJump(
        clf,
        norm=2,
        max_iter=iters,
        max_eval=max_eval,
        init_eval=init_eval,
        init_size=100,
        targeted=False,
        batch_size=128,
        verbose=False,
    )
    xn, yn = x.numpy().astype(np.float32), y.numpy()
    queries = np.zeros(len(xn), dtype=np.int64)
    outs = []
    start = time.perf_counter()
    for i in range(len(xn)):  # one image per call, to count each image's queries
        counter["on"] = False
        # ART predicts the clean input and the final result itself: count only its _perturb
        original = atk._perturb

        def counted(*a, _orig=original, **k):
            counter["on"] = True
            try:
                return _orig(*a, **k)
            finally:
                counter["on"] = False

        atk._perturb = counted  # type: ignore[method-assign]
        counter["n"] = 0
        outs.append(atk.generate(xn[i : i + 1], y=yn[i : i + 1]))
        atk._perturb = original  # type: ignore[method-assign]
        queries[i] = counter["n"]
    seconds = time.perf_counter() - start
    return torch.as_tensor(np.concatenate(outs), dtype=torch.float32), seconds, queries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="number of mnist5k test images")
    ap.add_argument("--queries", type=int, default=5000, help="queries per image")
    ap.add_argument("--art-iters", type=int, default=17, help="ART max_iter (0 skips ART); 17 = 5085 queries per image")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--budgets",
        type=int,
        nargs="*",
        default=[2000, 2500, 3000],
        help="extra bastion runs at smaller query budgets (the equal-quality comparison)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = bastion.models.load_zoo("mnist-cnn")
    data = bastion.load_dataset("mnist5k")
    x, y = data.x_test[: args.n].contiguous(), data.y_test[: args.n].contiguous()
    clean_ok = model.predict(x) == y
    emit(
        {
            "machine": {
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "n": args.n,
                "clean_accuracy": float(clean_ok.float().mean()),
            }
        }
    )

    ok, l2, sec = {}, {}, {}

    def score(lib: str, adv: torch.Tensor, seconds: float, **extra) -> None:
        pred = model.predict(adv)
        ok[lib] = clean_ok & (pred != y) & ((adv - x).flatten(1).abs().amax(1) > 0)
        l2[lib], sec[lib] = (adv - x).flatten(1).norm(dim=1), seconds
        emit(
            {
                "library": lib,
                "n": args.n,
                "seconds": round(seconds, 2),
                "success": int(ok[lib].sum()),
                "clean_correct": int(clean_ok.sum()),
                "median_l2_own_successes": round(float(l2[lib][ok[lib]].median()), 4) if bool(ok[lib].any()) else None,
                **extra,
            }
        )

    hsj = HopSkipJump(norm="l2", max_queries=args.queries)
    r = hsj(model, x, y)
    q = r.extra["queries"]
    score(
        "bastion-hsj",
        r.x_adv,
        r.seconds,
        attack=repr(hsj),
        queries_mean=round(float(q.float().mean()), 1),
        queries_max=int(q.max()),
    )
    cw = CarliniWagnerL2()
    rc = cw(model, x, y)
    score("bastion-cw (white-box)", rc.x_adv, rc.seconds, attack=repr(cw))
    if args.art_iters > 0:
        adv, seconds, qa = art_hsj(model, x, y, args.art_iters, init_eval=100, max_eval=10_000)
        score(
            "art-hsj",
            adv,
            seconds,
            attack=f"art HopSkipJump(norm=2, max_iter={args.art_iters}, max_eval=10000, "
            "init_eval=100, init_size=100, targeted=False)",
            queries_mean=round(float(qa.mean()), 1),
            queries_max=int(qa.max()),
        )

    # equal quality rather than equal budget: bastion at smaller budgets, against ART at the full one
    for b in args.budgets:
        hb = HopSkipJump(norm="l2", max_queries=b)
        rb = hb(model, x, y)
        score(
            f"bastion-hsj@{b}",
            rb.x_adv,
            rb.seconds,
            attack=repr(hb),
            queries_mean=round(float(rb.extra["queries"].float().mean()), 1),
        )

    # the floor for any implementation: the model's own forward time for n * queries inputs (estimated from
    # 50 batches of 128, the fastest batch size on a CPU for this model)
    xb = x[:1].repeat(128, 1, 1, 1)
    with torch.no_grad():
        model.module(xb)
        t0 = time.perf_counter()
        for _ in range(50):
            model.module(xb)
        per_input = (time.perf_counter() - t0) / (50 * 128)
    emit(
        {
            "model_forward_floor_seconds": round(per_input * args.n * args.queries, 1),
            "note": "forward passes alone for n * queries inputs; both libraries make about as many queries",
        }
    )
    common = torch.stack(list(ok.values())).all(dim=0)
    med = {lib: round(float(v[common].median()), 4) for lib, v in l2.items()}
    emit({"common_successes": int(common.sum()), "median_l2_common": med})
    ours, cwk = med["bastion-hsj"], med["bastion-cw (white-box)"]
    emit(
        {
            "check": "hsj median L2 / C&W median L2 (common successes)",
            "value": round(ours / cwk, 3),
            "target": "<= 1.5",
            "pass": ours <= 1.5 * cwk,
        }
    )
    if "art-hsj" in med:
        emit(
            {
                "check": "hsj median L2 bastion <= art (common successes)",
                "value": ours,
                "peer": med["art-hsj"],
                "pass": ours <= med["art-hsj"],
            }
        )
        emit(
            {
                "check": "hsj time art / bastion",
                "value": round(sec["art-hsj"] / sec["bastion-hsj"], 2),
                "target": ">= 3",
                "pass": sec["art-hsj"] >= 3 * sec["bastion-hsj"],
            }
        )
        emit(
            {
                "check": "hsj successes bastion >= art",
                "value": int(ok["bastion-hsj"].sum()),
                "peer": int(ok["art-hsj"].sum()),
                "pass": int(ok["bastion-hsj"].sum()) >= int(ok["art-hsj"].sum()),
            }
        )
        for b in args.budgets:
            lib = f"bastion-hsj@{b}"
            emit(
                {
                    "check": f"equal quality: bastion at {b} queries vs art at {args.queries}",
                    "median_l2": med[lib],
                    "peer_median_l2": med["art-hsj"],
                    "at_least_as_good": med[lib] <= med["art-hsj"],
                    "time_ratio_art_over_bastion": round(sec["art-hsj"] / sec[lib], 2),
                }
            )


if __name__ == "__main__":
    main()
