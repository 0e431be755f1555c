#!/usr/bin/env python
"""How far can a small patch go on mnist-cnn? The universal patch vs an estimated upper bound.

Issue 3 asks for >= 80% targeted success with a patch covering <= 10% of the image under random
placement. This script measures, on zoo:mnist-cnn / mnist5k (held-out test images):

1. ``universal``: bastion's universal patch (Brown et al. 2017) at area 0.1 (8x8 on 28x28) for every
   target class, trained on the 4,000 training images, evaluated on the 1,000 test images under fresh
   uniform random placement — with placement-only EOT and with the full EOT (rotation, scale,
   brightness/contrast, noise);
2. ``bound``: for --bound-targets, an estimated ceiling for ANY universal patch of that size under
   uniform placement: for each of --bound-n test images and each of the 36 positions of a stride-4
   grid (which covers the valid 21x21 offsets evenly), a patch optimised for that one image at that
   one position (Adam on a sigmoid parameterisation, --bound-steps steps; a pair counts when any step
   succeeded). A universal patch succeeds on an (image, position) pair only if some patch does, so
   its success rate under uniform placement is at most the fraction of pairs where one exists —
   which this estimates from below (an optimiser can miss a patch that exists);
3. ``area``: the universal patch's held-out success against patch area for --area-target, to show
   where >= 80% becomes reachable.

Prints one JSON line per measurement.

    python benchmarks/patch_bound.py                      # about 10 minutes on 2 cores
    python benchmarks/patch_bound.py --bound-n 20 --skip-area
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

import bastion
from bastion.attacks.evasion.patch import evaluate, fit, patch_side

PLACEMENT_ONLY = dict(rotation=0.0, scale=(1.0, 1.0), brightness=0.0, contrast=(1.0, 1.0), noise=0.0)


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def per_pair_bound(net: torch.nn.Module, x: torch.Tensor, target: int, side: int, steps: int, stride: int = 4):
    """(images, positions) bool: a patch optimised for that image at that position reached ``target``."""
    h, w = x.shape[-2:]
    pos = [(r, c) for r in range(0, h - side + 1, stride) for c in range(0, w - side + 1, stride)]
    n, p = x.shape[0], len(pos)
    xb = x.repeat_interleave(p, 0)
    mask = torch.zeros(p, 1, h, w)
    for i, (r, c) in enumerate(pos):
        mask[i, :, r : r + side, c : c + side] = 1
    mask = mask.repeat(n, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    param = (2 * torch.rand(xb.shape, generator=g) - 1).requires_grad_(True)
    opt = torch.optim.Adam([param], lr=0.1)
    hit = torch.zeros(n * p, dtype=torch.bool)
    want = torch.full((n * p,), target)
    for _ in range(steps):
        xa = xb * (1 - mask) + torch.sigmoid(4 * param) * mask
        z = net(xa)
        hit |= z.argmax(1) == want
        loss = F.cross_entropy(z, want, reduction="sum")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        hit |= net(xb * (1 - mask) + torch.sigmoid(4 * param) * mask).argmax(1) == want
    return hit.view(n, p), pos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000, help="universal patch training steps")
    ap.add_argument("--bound-targets", type=int, nargs="*", default=[8, 3])
    ap.add_argument("--bound-n", type=int, default=60, help="test images for the per-pair bound")
    ap.add_argument("--bound-steps", type=int, default=200)
    ap.add_argument("--area-target", type=int, default=3)
    ap.add_argument("--areas", type=float, nargs="*", default=[0.1, 0.2, 0.3, 0.4, 0.5])
    ap.add_argument("--skip-area", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = bastion.models.load_zoo("mnist-cnn")
    data = bastion.load_dataset("mnist5k")
    side = patch_side((1, 28, 28), 0.1)
    emit(
        {
            "machine": {"threads": torch.get_num_threads(), "torch": torch.__version__},
            "model": "zoo:mnist-cnn",
            "train_images": int(data.x_train.shape[0]),
            "test_images": int(data.x_test.shape[0]),
            "patch": f"{side}x{side}",
            "area": side * side / 784,
        }
    )

    for eot, transforms in (("placement", PLACEMENT_ONLY), ("full", {})):
        rates = {}
        start = time.perf_counter()
        for t in range(10):
            patch = fit(
                model,
                data.x_train,
                data.y_train,
                t,
                area=0.1,
                steps=args.steps,
                batch_size=128,
                generator=torch.Generator().manual_seed(0),
                **transforms,
            )
            rates[t] = round(
                evaluate(
                    model,
                    data.x_test,
                    data.y_test,
                    patch,
                    t,
                    generator=torch.Generator().manual_seed(1),
                    **PLACEMENT_ONLY,
                ),
                4,
            )
        emit(
            {
                "measure": "universal",
                "area": 0.1,
                "eot": eot,
                "held_out_success_by_target": rates,
                "best": max(rates.values()),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )

    for t in args.bound_targets:
        keep = data.y_test != t
        x = data.x_test[keep][: args.bound_n]
        start = time.perf_counter()
        hit, pos = per_pair_bound(model.module, x, t, side, args.bound_steps)
        emit(
            {
                "measure": "bound",
                "target": t,
                "images": int(x.shape[0]),
                "positions": len(pos),
                "upper_bound_uniform_placement": round(float(hit.float().mean()), 4),
                "best_position_per_image": round(float(hit.any(1).float().mean()), 4),
                "best_single_position": round(float(hit.float().mean(0).max()), 4),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )

    if not args.skip_area:
        for area in args.areas:
            patch = fit(
                model,
                data.x_train,
                data.y_train,
                args.area_target,
                area=area,
                steps=args.steps,
                batch_size=128,
                generator=torch.Generator().manual_seed(0),
                **PLACEMENT_ONLY,
            )
            s = evaluate(
                model,
                data.x_test,
                data.y_test,
                patch,
                args.area_target,
                generator=torch.Generator().manual_seed(1),
                **PLACEMENT_ONLY,
            )
            emit(
                {
                    "measure": "area",
                    "target": args.area_target,
                    "area": area,
                    "patch": f"{patch.shape[-1]}x{patch.shape[-1]}",
                    "held_out_success": round(s, 4),
                }
            )


if __name__ == "__main__":
    main()
