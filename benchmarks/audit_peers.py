#!/usr/bin/env python
"""The audit against the peers: bastion's `standard` profile on zoo:mnist-cnn vs torchattacks' and ART's PGD.

Issue 4 asks that the standard profile finish in under 15 minutes on 2 cores and that its worst-case
robust accuracy at each eps be no higher than what torchattacks' or ART's PGD reports on the same
images. This script runs, in one process on the first --n mnist5k test images:

1. ``bastion.audit.run_audit(profile="standard")`` (every probe; timed as a whole, report written to --out);
2. at each of the audit's eps, torchattacks.PGD and ART's ProjectedGradientDescent with the settings a
   user would take from the papers: 40 steps of 2.5 * eps / 40, one random start, true labels.

Prints one JSON line per measurement, then the checks with their targets.

    python benchmarks/audit_peers.py                 # about 10 minutes on 2 cores
    python benchmarks/audit_peers.py --profile quick --n 200
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings

import numpy as np
import torch

import bastion
from bastion.audit import run_audit

warnings.filterwarnings("ignore")


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="standard")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=40, help="PGD steps of the peers")
    ap.add_argument("--out", default=None, help="where the audit report goes (default: a temporary directory)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = bastion.models.load_zoo("mnist-cnn")
    data = bastion.load_dataset("mnist5k")
    x, y = data.x_test[: args.n].contiguous(), data.y_test[: args.n].contiguous()
    emit(
        {
            "machine": {"threads": torch.get_num_threads(), "torch": torch.__version__},
            "model": "zoo:mnist-cnn",
            "n": args.n,
            "profile": args.profile,
        }
    )

    out = args.out or tempfile.mkdtemp(prefix="bastion-audit-")
    start = time.perf_counter()
    report = run_audit(
        model, data, f"{out}/report", profile=args.profile, n=args.n, model_spec="zoo:mnist-cnn", data_spec="mnist5k"
    )
    seconds = time.perf_counter() - start
    eps_list = report["settings"]["eps"]
    emit(
        {
            "library": "bastion-audit",
            "profile": args.profile,
            "seconds": round(seconds, 1),
            "out": out,
            "probe_seconds": {p["probe"]: p["seconds"] for p in report["probes"]},
            "checks": {c["id"]: c["status"] for c in report["checks"]},
            "worst_case": {f"{e:g}": report["metrics"][f"robust_accuracy@eps={e:g}"] for e in eps_list},
            "pgd": {f"{e:g}": report["metrics"][f"robust_accuracy[pgd]@eps={e:g}"] for e in eps_list},
        }
    )

    peers: dict[str, dict[str, float]] = {}
    import torchattacks
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(
        model=model.module,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(1, 28, 28),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    for eps in eps_list:
        alpha = 2.5 * eps / args.steps
        t0 = time.perf_counter()
        adv = torchattacks.PGD(model.module, eps=eps, alpha=alpha, steps=args.steps, random_start=True)(x, y)
        t1 = time.perf_counter()
        peers.setdefault("torchattacks", {})[f"{eps:g}"] = float((model.predict(adv) == y).float().mean())
        art_pgd = ProjectedGradientDescent(
            clf,
            norm=np.inf,
            eps=eps,
            eps_step=alpha,
            max_iter=args.steps,
            num_random_init=1,
            batch_size=500,
            verbose=False,
        )
        adv_art = art_pgd.generate(x.numpy(), y.numpy())
        t2 = time.perf_counter()
        peers.setdefault("art", {})[f"{eps:g}"] = float((model.predict(torch.as_tensor(adv_art)) == y).float().mean())
        emit(
            {
                "eps": eps,
                "torchattacks_pgd": peers["torchattacks"][f"{eps:g}"],
                "art_pgd": peers["art"][f"{eps:g}"],
                "bastion_worst_case": report["metrics"][f"robust_accuracy@eps={eps:g}"],
                "seconds": {"torchattacks": round(t1 - t0, 1), "art": round(t2 - t1, 1)},
            }
        )

    emit(
        {
            "check": f"{args.profile} profile wall time (s)",
            "value": round(seconds, 1),
            "target": "< 900",
            "pass": seconds < 900,
        }
    )
    for e in eps_list:
        k = f"{e:g}"
        ours = report["metrics"][f"robust_accuracy@eps={k}"]
        best_peer = min(peers["torchattacks"][k], peers["art"][k])
        emit(
            {
                "check": f"worst-case robust accuracy <= peers' PGD at eps={k}",
                "value": ours,
                "peer_min": best_peer,
                "pass": ours <= best_peer,
            }
        )
    emit(
        {
            "check": "every validity check passes on the undefended model",
            "value": sorted({c["status"] for c in report["checks"]}),
            "pass": all(c["status"] == "pass" for c in report["checks"]),
        }
    )


if __name__ == "__main__":
    main()
