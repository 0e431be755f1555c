"""``bastion train``: train a registered architecture the way the zoo does (the library's
:func:`bastion.models.training.train_architecture`, on the one trainer)."""

from __future__ import annotations

import json
from typing import Any

import typer

from .common import LABEL_COLUMN_HELP, RecipeEpochs, echo_json, load_data_option
from .common import fail as _fail
from .common import log as _log


def train(
    arch: str = typer.Option(
        ...,
        "--arch",
        help="Registered architecture: digits-mlp, mnist-cnn, cancer-mlp, cancer-logreg, digits-logreg; "
        "HE-friendly (encrypted inference): digits-he-mlp, mnist-he-cnn, or NAME-he for any of them.",
    ),
    data: str = typer.Option(..., "--data", "-d", help="Built-in dataset name or a .npz/.csv file or image folder."),
    out: str = typer.Option(
        ..., "--out", "-o", help="Output .safetensors file (architecture name stored in its metadata)."
    ),
    epochs: RecipeEpochs = None,
    seed: int = typer.Option(0, "--seed", help="Seed for initialisation and shuffling."),
    label_column: str | None = typer.Option(None, "--label-column", help=LABEL_COLUMN_HELP),
    he: bool = typer.Option(
        False,
        "--he-friendly",
        help="Train the HE-friendly variant (ReLU-like -> polynomial activation, max -> average pooling), saved as "
        "ARCH-he (ARCH itself if it has nothing to rewrite); the record adds its CKKS depth and parameters under 'he'.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object (the training record)."),
) -> None:
    """Train a registered architecture the same deterministic way the zoo does, and save it as safetensors.

    The record (printed with --json, and stored in the file's metadata) has the test accuracy and, under
    "history", the loss and seconds of every epoch; with --he-friendly, under "he", the multiplicative depth, the
    128-bit-secure CKKS parameters and the plaintext multiplications of encrypted inference (bastion he inspect)."""
    import dataclasses

    from ..models.architectures import he_variant
    from ..models.loading import save_model
    from ..models.training import recipe, train_architecture

    if not out.endswith(".safetensors"):
        _fail(f"--out must end with .safetensors, got {out!r}")
    if epochs is not None and epochs < 1:
        _fail(f"--epochs must be >= 1, got {epochs}")
    if he:
        arch = he_variant(arch)
    config = dataclasses.replace(recipe(arch), seed=seed, **({"epochs": epochs} if epochs else {}))
    ds = load_data_option(data, label_column=label_column, log=None if as_json else _log)
    module, record = train_architecture(
        arch,
        ds,
        config,
        on_epoch=None if as_json else (lambda e, loss: _log(f"epoch {e + 1}/{config.epochs}  loss {loss:.4f}")),
    )
    he_info = _he_record(module, arch) if he else None
    if he_info is not None:
        record["he"] = he_info
    save_model(module, out, arch=arch, metadata={"bastion_record": json.dumps(record)})
    record["out"] = out
    if as_json:
        echo_json(record, default=None)
        return
    typer.echo(f"saved {out} ({arch}): test accuracy {record['test_accuracy']:.4f} in {record['seconds']} s")
    if he_info is not None:
        typer.echo(
            f"encrypted inference: depth {he_info['depth']}, N={he_info['params']['poly_modulus_degree']}, "
            f"{he_info['security_bits']}-bit security, {he_info['plaintext_multiplications']} plaintext "
            "multiplications"
        )


def _he_record(module: Any, arch: str) -> dict[str, Any]:
    """The CKKS summary of the trained ``module`` (a UsageError naming the layer if it cannot be compiled)."""
    from ..defenses.encrypted import compile_model
    from ..defenses.encrypted.bench import he_summary
    from ..models.architectures import build_architecture

    return he_summary(compile_model(module, build_architecture(arch)[1].input_shape, arch=arch))
