"""``bastion he``: private inference on CKKS-encrypted inputs (:mod:`bastion.defenses.encrypted`; the ``he`` extra).

``bench`` measures the real protocol on a dataset's test split against the plaintext model and the per-sample
TenSEAL baseline, ``inspect`` says what encrypted inference of a model needs (or which layer prevents it), and
``convert`` turns a trained ReLU network into an HE-friendly one and fine-tunes it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from .common import (
    Arch,
    Data,
    LabelColumn,
    Model,
    check_output_file,
    echo_json,
    emit,
    json_help,
    load_data_option,
    load_model_option,
    refuse,
)
from .common import log as _log
from .groups import OptionGroup, expand_groups

BENCH_KEYS = ("agreement", "max_abs_error", "seconds_per_sample", "seconds_per_batch", "n", "naive_seconds_per_sample")

N = Annotated[
    int | None, typer.Option("--n", help="Test inputs to encrypt (default: the whole test split; N/2 per ciphertext).")
]
Naive = Annotated[
    int,
    typer.Option("--naive", help="Inputs for the one-sample-per-ciphertext TenSEAL baseline (0: skip it)."),
]
Out = Annotated[str, typer.Option(..., "--out", "-o", help="Output .safetensors file of the HE-friendly model.")]
Epochs = Annotated[int, typer.Option("--epochs", help="Fine-tuning epochs after the activation swap.")]
Lr = Annotated[float | None, typer.Option("--lr", help="Fine-tuning learning rate (default: the recipe's).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the fine-tuning's shuffling.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object.")]
BenchJson = Annotated[bool, typer.Option("--json", help=json_help(BENCH_KEYS, ", ..."))]


@dataclass(frozen=True)
class FineTuning(OptionGroup):
    """How ``he convert`` fine-tunes the converted network (one parameter of the command)."""

    epochs: Epochs = 5
    lr: Lr = None
    seed: Seed = 0

    def check(self) -> None:
        """Refuse --epochs below 1 and an --lr that is not positive."""
        if self.epochs < 1:
            refuse(f"--epochs must be >= 1, got {self.epochs}")
        if self.lr is not None and not self.lr > 0:
            refuse(f"--lr must be > 0, got {self.lr}")


def _torch_model(spec: str, arch: str | None, log: Any) -> Any:
    """The ``--model`` as a TorchClassifier: only a torch network can be compiled for CKKS."""
    from ..models.torch import TorchClassifier

    clf = load_model_option(spec, arch=arch, log=log)
    if not isinstance(clf, TorchClassifier):
        refuse(
            f"--model: {spec!r} is a {type(clf).__name__}; encrypted inference compiles a torch network "
            "(zoo:NAME, or a .safetensors file from bastion train --he-friendly)"
        )
    return clf


def _compile(clf: Any, spec: str) -> Any:
    """The model compiled for CKKS; a layer it cannot evaluate is refused by compile_model with the
    ``--he-friendly`` alternative, to which the conversion of this very model is added where it would help."""
    from ..defenses.encrypted import compile_model
    from ..errors import UsageError
    from ..models.he import he_rewrites

    try:
        return compile_model(clf.module, clf.input_shape, arch=clf.arch)
    except UsageError as exc:
        if clf.arch is None or not he_rewrites(clf.module):
            raise
        refuse(f"{exc}; or convert this trained model: bastion he convert --model {spec} --data DATA --out FILE")


def he_bench_cmd(
    model: Model,
    data: Data,
    n: N = None,
    naive: Naive = 20,
    arch: Arch = None,
    label_column: LabelColumn = None,
    as_json: BenchJson = False,
) -> None:
    """Encrypt test inputs, evaluate the model on the ciphertexts, decrypt: agreement with the plaintext model,
    CKKS error, seconds per batch and per sample, bytes on the wire, and the speed-up over TenSEAL's
    one-sample-per-ciphertext evaluation."""
    import torch

    from ..defenses.encrypted.bench import he_bench

    if n is not None and n < 1:
        refuse(f"--n must be >= 1, got {n}")
    if naive < 0:
        refuse(f"--naive must be >= 0 (0 skips the baseline), got {naive}")
    say = None if as_json else _log
    clf = _torch_model(model, arch, say)
    program = _compile(clf, model)
    ds = load_data_option(data, label_column=label_column, log=say)
    if tuple(ds.input_shape) != tuple(clf.input_shape):
        refuse(f"--data: inputs of shape {ds.input_shape}, the model takes {clf.input_shape}")
    x, y = ds.x_test[:n], ds.y_test[:n]
    if x.shape[0] == 0:
        refuse(f"--data: {data!r} has no test inputs")
    with torch.no_grad():
        plain_pred = clf.predict(x).numpy()
    if say:
        say(f"depth {program.depth}, N={program.params.poly_modulus_degree}: encrypting {x.shape[0]} inputs")
    out = he_bench(program, x.numpy(), y.numpy(), plain_pred, naive_n=min(naive, x.shape[0]), module=clf.module)
    out["model"] = model
    emit(out, as_json, _print_bench)


def _print_bench(r: dict[str, Any]) -> None:
    typer.echo(f"CKKS {_ckks(r)}, depth {r['depth']}, {r['slots']} samples per ciphertext")
    typer.echo(f"agreement with the plaintext model: {r['agreement']:.4f} on {r['n']} inputs")
    if "encrypted_accuracy" in r:
        typer.echo(f"accuracy: plaintext {r['plain_accuracy']:.4f}, encrypted {r['encrypted_accuracy']:.4f}")
    typer.echo(f"max abs error of the decrypted scores: {r['max_abs_error']:.3g}")
    typer.echo(
        f"latency: {r['seconds_per_batch']:.3f} s per batch of {r['n']} (encrypt {r['encrypt_seconds']:.3f}, "
        f"evaluate {r['evaluate_seconds']:.3f}, decrypt {r['decrypt_seconds']:.3f}); "
        f"{r['seconds_per_sample'] * 1000:.2f} ms per sample"
    )
    typer.echo(
        f"ciphertexts: request {r['request_bytes'] / 1e6:.1f} MB ({r['request_bytes_per_sample'] / 1e3:.1f} kB per "
        f"sample, context {r['context_bytes'] / 1e6:.1f} MB), reply {r['reply_bytes'] / 1e6:.1f} MB"
    )
    if "naive_seconds_per_sample" in r:
        typer.echo(
            f"TenSEAL one sample per ciphertext ({r['naive_method']}, {r['naive_n']} inputs): "
            f"{r['naive_seconds_per_sample'] * 1000:.1f} ms per sample, agreement {r['naive_agreement']:.4f}; "
            f"packed is {r['speedup']:.1f}x faster"
        )


def _ckks(summary: dict[str, Any], *, bits: bool = False) -> str:
    """The CKKS parameters of a compiled model's summary, and their security (``bits``: with the modulus bits used
    of the most that 128-bit security allows)."""
    p = summary["params"]
    used = f" ({p['total_bits']} of {p['max_bits_128']} bits)" if bits else ""
    return (
        f"N={p['poly_modulus_degree']}, primes {p['coeff_mod_bit_sizes']}{used}, scale 2^{p['scale_bits']}, "
        f"{summary['security_bits']}-bit security"
    )


def he_inspect(model: Model, arch: Arch = None, as_json: AsJson = False) -> None:
    """What encrypted inference of the model needs: multiplicative depth, 128-bit-secure CKKS parameters, slots,
    plaintext multiplications and the compiled layers. A layer CKKS cannot evaluate (ReLU, max pooling) is named,
    with the HE-friendly alternative, and exits 2."""
    from ..defenses.encrypted.bench import he_summary

    clf = _torch_model(model, arch, None if as_json else _log)
    info = {"model": model, "arch": clf.arch, **he_summary(_compile(clf, model))}
    if as_json:
        echo_json(info)
        return
    typer.echo(f"{model}: input {info['input_shape']}, {info['n_outputs']} outputs")
    typer.echo(f"depth {info['depth']}: {_ckks(info, bits=True)}, {info['slots']} samples per ciphertext")
    typer.echo(f"{info['plaintext_multiplications']} plaintext multiplications per ciphertext batch")
    for layer in info["layers"]:
        typer.echo(f"  {layer}")


@expand_groups
def he_convert(
    model: Model,
    data: Data,
    out: Out,
    tuning: FineTuning = FineTuning(),
    arch: Arch = None,
    label_column: LabelColumn = None,
    as_json: AsJson = False,
) -> None:
    """Make a trained network HE-friendly (ReLU-like -> polynomial activation, max -> average pooling), fine-tune
    it on the data's training split for --epochs and save it as ARCH-he; reports the test accuracy of the original,
    right after the swap and after fine-tuning, and the CKKS summary of the result."""
    from ..defenses.encrypted import compile_model
    from ..defenses.encrypted.bench import he_summary
    from ..models.loading import save_model
    from ..models.training import he_finetune

    check_output_file(out, "--out", suffix=".safetensors")
    tuning.check()
    say = None if as_json else _log
    clf = _torch_model(model, arch, say)
    if clf.arch is None:
        refuse(f"--model: {model!r} is not of a registered architecture; give zoo:NAME or a file from bastion train")
    ds = load_data_option(data, label_column=label_column, log=say)
    on_epoch = None if say is None else (lambda e, loss: _log(f"epoch {e + 1}/{tuning.epochs}  loss {loss:.4f}"))
    module, record = he_finetune(clf.module, clf.arch, ds, **tuning.named(), on_epoch=on_epoch)
    summary = he_summary(compile_model(module, clf.input_shape, arch=str(record["arch"])))
    record["he"] = summary
    save_model(module, out, arch=str(record["arch"]), metadata={"bastion_record": json.dumps(record)})
    record["out"] = out
    if as_json:
        echo_json(record)
        return
    typer.echo(
        f"saved {out} ({record['arch']}): test accuracy {record['accuracy_before']:.4f} (original) -> "
        f"{record['accuracy_swapped']:.4f} (swapped) -> {record['accuracy_after']:.4f} (after {tuning.epochs} epochs; "
        f"change {record['accuracy_change']:+.4f}); encrypted inference at depth {summary['depth']}"
    )
