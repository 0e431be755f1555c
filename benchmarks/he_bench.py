#!/usr/bin/env python
"""Private inference on CKKS ciphertexts: bastion's slot-batched protocol against TenSEAL's one sample per ciphertext.

Sections (``--only`` picks some; one JSON line each, printed and appended to ``--out``, with the machine):

- ``logreg``: the zoo's ``digits-logreg`` on the whole digits test split (360 inputs, one ciphertext batch):
  agreement with the plaintext model, max abs error of the decrypted scores, seconds per sample of the packed
  protocol (encrypt + evaluate + decrypt of the batch / n) against TenSEAL's ``ckks_vector(x_i).mm(W.T) + b`` per
  sample (N = 8192, [60, 40, 40, 60], 2**40, on ``--naive-logreg`` inputs). Target: ratio >= 100x.
- ``cnn``: ``mnist-he-cnn`` (TenSEAL's MNIST tutorial network with PolyAct) trained on mnist5k with its recipe,
  encrypted on the 1,000 test images: plaintext vs encrypted accuracy (target: within 0.5 points), seconds and
  request bytes per sample, and the ratio to the tutorial's evaluation (im2col + conv2d_im2col + pack_vectors +
  square + mm, one image per ciphertext, N = 8192, [31, 26 x 6, 31], 2**26) on ``--naive-cnn`` images.

Times include every client and server step of one batch, not key generation. These machines are noisy (and
shared): compare the ratios, measured in the same process, rather than the absolute seconds.

    OMP_NUM_THREADS=1 python benchmarks/he_bench.py --out docs/bench-he.jsonl
    python benchmarks/he_bench.py --only logreg
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import tenseal
import torch

from _machine import machine as _machine
from bastion.data import load_dataset
from bastion.defenses.encrypted import compile_model
from bastion.defenses.encrypted.bench import he_bench
from bastion.models.training import train_recipe
from bastion.models.zoo import load_zoo


def machine() -> dict[str, Any]:
    return _machine(tenseal=str(tenseal.__version__))


def _run(clf: Any, x: torch.Tensor, y: torch.Tensor, naive_n: int) -> dict[str, Any]:
    program = compile_model(clf.module, clf.input_shape, arch=clf.arch)
    with torch.no_grad():
        plain_pred = clf.predict(x).numpy()
    return he_bench(program, x.numpy(), y.numpy(), plain_pred, naive_n=naive_n, module=clf.module)


def section_logreg(naive_n: int) -> dict[str, Any]:
    ds = load_dataset("digits")
    r = _run(load_zoo("digits-logreg"), ds.x_test, ds.y_test, naive_n)
    r["targets"] = {"speedup >= 100": r["speedup"] >= 100, "agreement >= 0.995": r["agreement"] >= 0.995}
    return {"section": "logreg", "model": "zoo:digits-logreg", "data": "digits", **r}


def section_cnn(naive_n: int) -> dict[str, Any]:
    ds = load_dataset("mnist5k")
    t0 = time.perf_counter()
    clf, record = train_recipe(ds, "mnist-he-cnn")
    train_seconds = time.perf_counter() - t0
    r = _run(clf, ds.x_test, ds.y_test, naive_n)
    gap = abs(r["plain_accuracy"] - r["encrypted_accuracy"])
    r["targets"] = {"accuracy gap <= 0.005": gap <= 0.005}
    return {
        "section": "cnn",
        "model": "mnist-he-cnn",
        "data": "mnist5k",
        "train_seconds": round(train_seconds, 2),
        "train_test_accuracy": record["test_accuracy"],
        **r,
    }


def _summary(r: dict[str, Any]) -> str:
    acc = (
        f"acc plain {r['plain_accuracy']:.4f} encrypted {r['encrypted_accuracy']:.4f}; "
        if "plain_accuracy" in r
        else ""
    )
    return (
        f"{r['section']:6} n={r['n']} agreement {r['agreement']:.4f} max err {r['max_abs_error']:.3g}; {acc}"
        f"packed {r['seconds_per_sample'] * 1000:.2f} ms/sample ({r['seconds_per_batch']:.1f} s/batch), "
        f"{r['request_bytes_per_sample'] / 1e3:.1f} kB/sample; naive {r['naive_seconds_per_sample'] * 1000:.0f} "
        f"ms/sample on {r['naive_n']} (agreement {r['naive_agreement']:.3f}); ratio {r['speedup']:.1f}x; "
        f"targets {r['targets']}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="logreg,cnn", help="comma-separated sections: logreg, cnn")
    ap.add_argument("--naive-logreg", type=int, default=30, help="inputs for the per-sample baseline (logreg)")
    ap.add_argument("--naive-cnn", type=int, default=20, help="images for the tutorial's per-sample evaluation")
    ap.add_argument("--out", default=None, help="append the JSON lines to this file")
    args = ap.parse_args()
    sections = {"logreg": lambda: section_logreg(args.naive_logreg), "cnn": lambda: section_cnn(args.naive_cnn)}
    info = machine()
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        t0 = time.perf_counter()
        result = {**sections[name](), "machine": info}
        result["bench_seconds"] = round(time.perf_counter() - t0, 1)
        print(_summary(result), flush=True)
        line = json.dumps(result, default=lambda o: o.item() if isinstance(o, np.generic) else str(o))
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
