"""``bastion train``: train a registered architecture the way the zoo does (the library's
:func:`bastion.models.training.train_architecture`, on the one trainer)."""

from __future__ import annotations

import json

import typer

from .common import LABEL_COLUMN_HELP, load_data_option
from .common import fail as _fail
from .common import log as _log


def train(
    arch: str = typer.Option(..., "--arch", help="Registered architecture: digits-mlp, mnist-cnn, cancer-mlp."),
    data: str = typer.Option(..., "--data", "-d", help="Built-in dataset name or a .npz/.csv file or image folder."),
    out: str = typer.Option(
        ..., "--out", "-o", help="Output .safetensors file (architecture name stored in its metadata)."
    ),
    epochs: int | None = typer.Option(None, "--epochs", help="Override the recipe's number of epochs."),
    seed: int = typer.Option(0, "--seed", help="Seed for initialisation and shuffling."),
    label_column: str | None = typer.Option(None, "--label-column", help=LABEL_COLUMN_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object (the training record)."),
) -> None:
    """Train a registered architecture the same deterministic way the zoo does, and save it as safetensors.

    The record (printed with --json, and stored in the file's metadata) has the test accuracy and, under
    "history", the loss and seconds of every epoch."""
    import dataclasses

    from ..models.loading import save_model
    from ..models.training import TRAIN_CONFIGS, TrainConfig, train_architecture

    if not out.endswith(".safetensors"):
        _fail(f"--out must end with .safetensors, got {out!r}")
    if epochs is not None and epochs < 1:
        _fail(f"--epochs must be >= 1, got {epochs}")
    config = TRAIN_CONFIGS.get(arch, TrainConfig())
    config = dataclasses.replace(config, seed=seed, **({"epochs": epochs} if epochs else {}))
    ds = load_data_option(data, label_column=label_column, log=None if as_json else _log)
    module, record = train_architecture(
        arch,
        ds,
        config,
        on_epoch=None if as_json else (lambda e, loss: _log(f"epoch {e + 1}/{config.epochs}  loss {loss:.4f}")),
    )
    save_model(module, out, arch=arch, metadata={"bastion_record": json.dumps(record)})
    record["out"] = out
    if as_json:
        typer.echo(json.dumps(record))
    else:
        typer.echo(f"saved {out}: test accuracy {record['test_accuracy']:.4f} in {record['seconds']} s")
