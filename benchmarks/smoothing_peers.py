#!/usr/bin/env python
"""Randomized smoothing (Cohen et al. 2019): bastion's SmoothedClassifier.certify vs ART's
PyTorchRandomizedSmoothing.certify on the same noise-trained model, images, sigma, n0, n and alpha.

The base model is zoo:mnist-cnn fine-tuned with Gaussian noise (``train_with_noise``, --sigma, --epochs);
both libraries wrap the *same* torch module. Certification: sigma=0.25, n0=100 selection samples,
n=10,000 estimation samples, alpha=0.001, the first 200 mnist5k test images.

ART's API, read in its source (art/estimators/certification/randomized_smoothing/randomized_smoothing.py):
``certify(x, n, batch_size=32)`` draws ``self.sample_size`` samples to *select* the top class and ``n``
fresh ones to *estimate* it, then takes ``proportion_confint(count, n, alpha=2 * self.alpha,
method="beta")[0]`` (statsmodels), abstains below 1/2 and returns ``scale * norm.ppf(p)`` — Cohen's
CERTIFY. So ``sample_size`` is Cohen's n0 (not n): the fair setting is ``sample_size=n0`` and
``certify(x, n=n)``, with the same alpha and sigma (``scale``). Batch sizes: before the run both libraries
are timed on --sweep-images images at each --sweep batch size and each then runs at its fastest (on a
2-core CPU: ART at 32, its own default; bastion at 64, its CPU default) unless --batch-size /
--art-batch-size fix them. ART draws its noise with the global numpy RNG (seeded here with
np.random.seed(0)), one image at a time, all n copies at once. --compile runs bastion with
``compile=True`` (torch.compile); the timing hooks are then left off both libraries.

Prints one JSON line per measurement, then the checks with their targets:

- bastion's radii against the closed form sigma * Phi^-1(CP lower bound) of bastion's own counts, the
  bound taken from scipy's binomtest exact interval (exact to rounding);
- bastion vs ART per image: the same abstain decisions and labels up to Monte-Carlo noise, mean |delta
  radius|, fraction of radii within --tolerance;
- throughput (images/s) of both and the ratio (target >= 3x ART). Both make exactly images * (n0 + n)
  forward passes of the same model; the time spent inside them is measured in the run
  (seconds_in_model_forward, hooks on the model's layers; not with --compile). On a CPU that time
  dominates, so the ratio cannot exceed ART's total time over bastion's forward time (printed as the
  ceiling); the time each library spends *outside* the model is printed too (the implementation's own
  cost);
- peak memory for n=10,000 vs n=100,000 on one image (VmHWM on Linux; torch's CUDA peak on a GPU):
  flat for bastion (noise in batches), proportional to n for ART.

    python benchmarks/smoothing_peers.py --compile            # the full run (~4 min on 2 CPU cores)
    python benchmarks/smoothing_peers.py --images 20 --no-art # a quick look
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.stats import binomtest, norm

import bastion
from bastion.defenses.certification import ABSTAIN, SmoothedClassifier, train_with_noise

warnings.filterwarnings("ignore")


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def peak_memory_kb(fn, device: torch.device) -> int | None:
    """Peak memory (kB) while ``fn`` runs above what was held before: CUDA allocator peak on a GPU, else the
    process's peak resident set (VmHWM, reset through /proc/self/clear_refs); None where neither exists."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) // 1024
    status = Path("/proc/self/status")
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None

    def field(name: str) -> int:
        return int(re.search(rf"{name}:\s+(\d+)", status.read_text()).group(1))

    before = field("VmRSS")
    fn()
    return field("VmHWM") - before


class ForwardTimer:
    """Wall time spent inside the model's leaf modules (hooks on each leaf, so it also counts ART, whose wrapper
    calls a Sequential's children one by one): the forward-pass work every implementation must do."""

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.seconds, self.device, self._t0 = 0.0, device, 0.0
        leaves = [m for m in module.modules() if not list(m.children())]
        self._handles = [
            h for m in leaves for h in (m.register_forward_pre_hook(self._pre), m.register_forward_hook(self._post))
        ]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _pre(self, *_: object) -> None:
        self._sync()
        self._t0 = time.perf_counter()

    def _post(self, *_: object) -> None:
        self._sync()
        self.seconds += time.perf_counter() - self._t0

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def art_smoother(module: torch.nn.Module, args, device: torch.device):
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

    return PyTorchRandomizedSmoothing(
        model=module,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(1, 28, 28),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="gpu" if device.type == "cuda" else "cpu",
        sample_size=args.n0,
        scale=args.sigma,
        alpha=args.alpha,
    )


def summary(labels: np.ndarray, radii: np.ndarray, y: np.ndarray) -> dict:
    ok = labels == y
    return {
        "abstention_rate": round(float((labels == ABSTAIN).mean()), 4),
        **{f"certified_accuracy@r={r:g}": round(float((ok & (radii >= r)).mean()), 4) for r in (0.0, 0.25, 0.5, 0.75)},
        "mean_radius_certified_correct": round(float(radii[ok].mean()), 4) if ok.any() else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200, help="first N mnist5k test images")
    ap.add_argument("--sigma", type=float, default=0.25)
    ap.add_argument("--n0", type=int, default=100)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--alpha", type=float, default=0.001)
    ap.add_argument("--epochs", type=int, default=3, help="Gaussian-noise fine-tuning epochs of zoo:mnist-cnn")
    ap.add_argument(
        "--batch-size", type=int, default=None, help="bastion's noise batch (samples); default: the fastest of --sweep"
    )
    ap.add_argument(
        "--art-batch-size", type=int, default=None, help="ART's certify batch_size; default: the fastest of --sweep"
    )
    ap.add_argument(
        "--sweep",
        type=int,
        nargs="*",
        default=[32, 64, 128, 256, 1000],
        help="batch sizes timed for both libraries on --sweep-images images before the run",
    )
    ap.add_argument("--sweep-images", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="bastion with compile=True (torch.compile)")
    ap.add_argument("--tolerance", type=float, default=0.02, help="radius agreement tolerance (input units)")
    ap.add_argument("--memory-n", type=int, nargs=2, default=[10_000, 100_000])
    ap.add_argument("--chunk", type=int, default=10, help="images per interleaved chunk")
    ap.add_argument("--no-art", action="store_true", help="bastion only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = bastion.load_dataset("mnist5k")
    zoo = bastion.models.load_zoo("mnist-cnn")
    x, y = data.x_test[: args.images].contiguous(), data.y_test[: args.images].contiguous()
    emit(
        {
            "machine": {
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "device": str(device),
                "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                "images": args.images,
                "sigma": args.sigma,
                "n0": args.n0,
                "n": args.n,
                "alpha": args.alpha,
            }
        }
    )

    t0 = time.perf_counter()
    module = train_with_noise(
        copy.deepcopy(zoo.module).to(device),
        data.x_train.to(device),
        data.y_train.to(device),
        args.sigma,
        epochs=args.epochs,
        seed=0,
    )
    base = bastion.TorchClassifier(module, n_classes=10, input_shape=(1, 28, 28), output="logits")
    with torch.no_grad():
        xd = x.to(device)
        clean = float((module(xd).argmax(1).cpu() == y).float().mean())
        noisy = float(
            (
                module(
                    xd
                    + args.sigma
                    * torch.randn(xd.shape, generator=torch.Generator(device).manual_seed(1), device=device)
                )
                .argmax(1)
                .cpu()
                == y
            )
            .float()
            .mean()
        )
    emit(
        {
            "training": {
                "epochs": args.epochs,
                "seconds": round(time.perf_counter() - t0, 1),
                "clean_accuracy": clean,
                "accuracy_under_noise": noisy,
            }
        }
    )

    # -- both libraries, interleaved --------------------------------------------------------------------------
    # The machine is shared: its speed drifts by 2-3x over minutes. The images are certified in chunks, each
    # chunk by both libraries back to back (in alternating order), so drift hits both alike.
    # compiled, bastion runs its own copy of the module (same weights; timing hooks would break the graph)
    own = (
        bastion.TorchClassifier(copy.deepcopy(module), n_classes=10, input_shape=(1, 28, 28), output="logits")
        if args.compile
        else base
    )
    libs = ["bastion"] if args.no_art else ["bastion", "art"]
    art = None if args.no_art else art_smoother(module, args, device)
    xn = x.numpy().astype(np.float32)

    # -- batch sizes: each library at its fastest on this machine (a short timed sweep, warm caches) ------------
    def timed(fn) -> float:
        fn()  # warm-up: allocator, oneDNN primitives, the compiled graph for this shape
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    chosen = {"bastion": args.batch_size, "art": args.art_batch_size}
    sweep_x = xd[: args.sweep_images]
    for lib in libs:
        if chosen[lib] is not None:
            continue
        times = {}
        for bs in args.sweep:
            if lib == "bastion":
                sm = SmoothedClassifier(
                    own, args.sigma, n0=args.n0, n=args.n, alpha=args.alpha, batch_size=bs, compile=args.compile
                )
                times[bs] = timed(lambda sm=sm: sm.certify(sweep_x))
            else:
                times[bs] = timed(lambda bs=bs: art.certify(xn[: args.sweep_images], n=args.n, batch_size=bs))
        chosen[lib] = min(times, key=times.get)
        emit(
            {
                "sweep": lib,
                "images": args.sweep_images,
                "images_per_s": {str(b): round(args.sweep_images / t, 3) for b, t in times.items()},
                "chosen_batch_size": chosen[lib],
            }
        )
    art_bs = chosen["art"]
    smoothed = SmoothedClassifier(
        own, args.sigma, n0=args.n0, n=args.n, alpha=args.alpha, batch_size=chosen["bastion"], compile=args.compile
    )
    np.random.seed(0)  # ART draws its noise from the global numpy RNG
    smoothed.certify(xd[:2], n=1000)  # warm-up (CUDA context, kernels, the compiled graph)
    if device.type == "cuda":
        torch.cuda.synchronize()
    out: dict[str, list] = {lib: [] for lib in libs}
    sec = dict.fromkeys(libs, 0.0)
    fwd = dict.fromkeys(libs, 0.0)
    # the timing hooks cost both libraries a little per batch; with --compile bastion's copy has none, so ART's
    # module gets none either (neither library's forward time is then measured)
    timer = None if args.compile else ForwardTimer(module, device)
    for k, i in enumerate(range(0, args.images, args.chunk)):
        for lib in libs if k % 2 == 0 else libs[::-1]:
            f0, t0 = timer.seconds if timer else 0.0, time.perf_counter()
            if lib == "bastion":
                res = smoothed.certify(xd[i : i + args.chunk], return_counts=True)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                res = tuple(r.cpu().numpy() for r in res)
            else:
                res = art.certify(xn[i : i + args.chunk], n=args.n, batch_size=art_bs)
            sec[lib] += time.perf_counter() - t0
            fwd[lib] += timer.seconds - f0 if timer else 0.0
            out[lib].append(res)
    if timer:
        timer.remove()
    labels_b, radii_b, counts_b = (np.concatenate([r[j] for r in out["bastion"]]) for j in range(3))
    sec_b, fwd_b = sec["bastion"], fwd["bastion"]
    yn = y.numpy()
    emit(
        {
            "library": "bastion",
            "images": args.images,
            "seconds": round(sec_b, 2),
            "images_per_s": round(args.images / sec_b, 3),
            "seconds_in_model_forward": None if args.compile else round(fwd_b, 2),
            **summary(labels_b, radii_b, yn),
            "config": repr(smoothed),
        }
    )
    sec_a = None
    if art is not None:
        labels_a = np.concatenate([np.asarray(r[0], dtype=np.int64) for r in out["art"]])
        radii_a = np.concatenate([np.asarray(r[1], dtype=np.float64) for r in out["art"]])
        sec_a, fwd_a = sec["art"], fwd["art"]
        emit(
            {
                "library": "art",
                "images": args.images,
                "seconds": round(sec_a, 2),
                "images_per_s": round(args.images / sec_a, 3),
                "seconds_in_model_forward": None if args.compile else round(fwd_a, 2),
                **summary(labels_a, radii_a, yn),
                "config": f"PyTorchRandomizedSmoothing(sample_size={args.n0}, scale={args.sigma}, alpha={args.alpha}); "
                f"certify(x, n={args.n}, batch_size={art_bs})",
            }
        )

    # closed form from bastion's own counts (scipy's exact interval, independent of bastion's bounds module)
    low = np.array(
        [
            binomtest(int(k), args.n).proportion_ci(confidence_level=1 - 2 * args.alpha, method="exact").low
            for k in counts_b
        ]
    )
    closed = np.where(low >= 0.5, args.sigma * norm.ppf(np.maximum(low, 0.5)), 0.0)
    abstain_closed = low < 0.5
    closed_err = float(np.abs(closed - radii_b).max()) if len(closed) else 0.0
    abstain_ok = bool(((labels_b == ABSTAIN) == abstain_closed).all())

    mem = {}
    for nn in args.memory_n:
        mem[("bastion", nn)] = peak_memory_kb(lambda nn=nn: smoothed.certify(xd[:1], n=nn), device)
        emit({"memory": {"library": "bastion", "n": nn, "images": 1, "peak_kb": mem[("bastion", nn)]}})
    if art is not None:
        for nn in args.memory_n:
            mem[("art", nn)] = peak_memory_kb(lambda nn=nn: art.certify(xn[:1], n=nn, batch_size=art_bs), device)
            emit({"memory": {"library": "art", "n": nn, "images": 1, "peak_kb": mem[("art", nn)]}})

    if art is not None:
        same_abstain = (labels_a == ABSTAIN) == (labels_b == ABSTAIN)
        both = (labels_a != ABSTAIN) & (labels_b != ABSTAIN)
        d = np.abs(radii_a - radii_b)
        emit(
            {
                "comparison": {
                    "same_abstain_decision": round(float(same_abstain.mean()), 4),
                    "abstain_bastion": int((labels_b == ABSTAIN).sum()),
                    "abstain_art": int((labels_a == ABSTAIN).sum()),
                    "both_certified": int(both.sum()),
                    "same_label_where_both_certify": round(float((labels_a[both] == labels_b[both]).mean()), 4)
                    if both.any()
                    else None,
                    "mean_abs_radius_difference": round(float(d.mean()), 5),
                    "max_abs_radius_difference": round(float(d.max()), 5),
                    f"fraction_within_{args.tolerance:g}": round(float((d <= args.tolerance).mean()), 4),
                    "mean_radius": {"bastion": round(float(radii_b.mean()), 5), "art": round(float(radii_a.mean()), 5)},
                    "seconds_outside_model_forward": {
                        "bastion": None if args.compile else round(sec_b - fwd_b, 2),
                        "art": None if args.compile else round(sec_a - fwd_a, 2),
                    },
                }
            }
        )

    # -- checks -------------------------------------------------------------------------------------------------
    emit(
        {
            "check": "bastion radii == sigma * Phi^-1(CP lower bound of its own counts) (max |diff|)",
            "value": closed_err,
            "abstain_rule_matches": abstain_ok,
            "target": "<= 1e-9 and same abstentions",
            "pass": closed_err <= 1e-9 and abstain_ok,
        }
    )
    if sec_a is not None:
        emit(
            {
                "check": "same abstain decision bastion vs art (fraction of images)",
                "value": round(float(same_abstain.mean()), 4),
                "target": ">= 0.95",
                "pass": float(same_abstain.mean()) >= 0.95,
            }
        )
        frac = float((d <= args.tolerance).mean())
        emit(
            {
                "check": f"radius within {args.tolerance:g} of art's (fraction of images)",
                "value": round(frac, 4),
                "mean_abs_difference": round(float(d.mean()), 5),
                "target": ">= 0.9",
                "pass": frac >= 0.9,
            }
        )
        ratio = sec_a / sec_b
        emit(
            {
                "check": "throughput bastion / art (images/s)",
                "value": round(ratio, 2),
                "target": ">= 3",
                "pass": ratio >= 3,
                "batch_sizes": chosen,
                "compile": args.compile,
                **(
                    {}
                    if args.compile
                    else {
                        "ceiling_art_seconds_over_bastion_forward_seconds": round(sec_a / fwd_b, 2),
                        "overhead_ratio_outside_forward": round((sec_a - fwd_a) / max(sec_b - fwd_b, 1e-9), 2),
                    }
                ),
            }
        )
    small, large = mem.get(("bastion", args.memory_n[0])), mem.get(("bastion", args.memory_n[1]))
    if small is not None and large is not None:
        # what holding the extra noisy copies would take (float32): an implementation not batching in n grows by it
        extra_kb = (args.memory_n[1] - args.memory_n[0]) * x[0].numel() * 4 // 1024
        emit(
            {
                "check": f"bastion peak memory n={args.memory_n[1]} vs n={args.memory_n[0]} (kB)",
                "value": [small, large],
                "growth_kb": large - small,
                "unbatched_growth_kb": extra_kb,
                "target": "flat: growth < 10% of what the extra noisy samples would take",
                "pass": large - small < extra_kb / 10,
                **({"art": [mem[("art", m)] for m in args.memory_n]} if ("art", args.memory_n[0]) in mem else {}),
            }
        )


if __name__ == "__main__":
    main()
