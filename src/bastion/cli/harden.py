"""``bastion harden``: adversarial training and Gaussian-noise training from the command line (registered by
:mod:`bastion.cli`)."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from ..errors import UsageError
from .common import log as _log
from .common import refuse as _fail


def _harden_gaussian(
    clf: Any,
    ds: Any,
    sigma: float,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    out: str,
    record: str | None,
    arch: str,
    model: str,
    data: str,
    as_json: bool,
) -> None:
    """Gaussian-noise training (Cohen et al. 2019): the base model randomized smoothing needs."""
    import copy
    import time

    import torch

    from ..defenses.certification import train_with_noise
    from ..models.training import accuracy

    module = copy.deepcopy(clf.module)
    start = time.perf_counter()
    epochs_done: list[dict[str, Any]] = []

    def on_epoch(epoch: int, loss: float) -> None:
        epochs_done.append({"epoch": epoch + 1, "loss": loss})
        if not as_json:
            _log(f"epoch {epoch + 1}/{epochs}  loss {loss:.4f}")

    train_with_noise(
        module, ds.x_train, ds.y_train, sigma, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, on_epoch=on_epoch
    )
    g = torch.Generator().manual_seed(seed)
    noisy = ds.x_test + sigma * torch.randn(ds.x_test.shape, generator=g)
    rec = {
        "config": {
            "defense": "gaussian",
            "sigma": sigma,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
        },
        "epochs": epochs_done,
        "seconds": round(time.perf_counter() - start, 3),
        "test_accuracy": accuracy(module, ds.x_test, ds.y_test),
        "test_accuracy_under_noise": accuracy(module, noisy, ds.y_test),
        "model": model,
        "data": data,
        "arch": arch,
        "out": out,
    }
    rec_path = _write_hardened(module, out, arch, rec, record)
    if as_json:
        typer.echo(json.dumps(rec))
    else:
        typer.echo(
            f"saved {out} (gaussian noise, sigma={sigma:g}, {epochs} epochs, {rec['seconds']:.1f} s): test "
            f"accuracy {rec['test_accuracy']:.3f}, under noise {rec['test_accuracy_under_noise']:.3f}; "
            f"audit it with --smooth {sigma:g}; record {rec_path}"
        )


def _write_hardened(module: Any, out: str, arch: str | None, rec: dict, record: str | None) -> str:
    """Write a hardened model as safetensors (the training record in its metadata) and the JSON record;
    return the record's path."""
    from pathlib import Path

    from ..models.loading import save_model

    save_model(module, out, arch=arch, metadata={"bastion_defense": rec["config"], "bastion_record": rec})
    rec_path = Path(record) if record else Path(out).with_suffix(".json")
    rec_path.write_text(json.dumps(rec, indent=1), encoding="utf-8")
    return str(rec_path)


def harden(
    model: str = typer.Option(
        ..., "--model", "-m", help="The torch model to harden: zoo:NAME, a .safetensors file, or module:function."
    ),
    data: str = typer.Option(
        ...,
        "--data",
        "-d",
        help="Built-in dataset name or a .npz/.csv file or image folder (its training split is used).",
    ),
    defense: str = typer.Option(
        ...,
        "--defense",
        help="pgd-at (Madry et al.), trades (Zhang et al.), fast-at (one FGSM step per epoch; see --fast-init), or gaussian (noise training for randomized smoothing, Cohen et al.).",
    ),
    sigma: float | None = typer.Option(None, "--sigma", help="With --defense gaussian: the noise level (input units)."),
    out: str = typer.Option(..., "--out", "-o", help="Output .safetensors file; loads back with --model OUT anywhere."),
    eps: float = typer.Option(0.3, "--eps", help="Perturbation budget trained against (input units)."),
    norm: str = typer.Option("linf", "--norm", help="linf or l2."),
    epochs: int = typer.Option(10, "--epochs", help="Training epochs."),
    batch_size: int = typer.Option(128, "--batch-size", help="Training batch size."),
    lr: float = typer.Option(1e-3, "--lr", help="Learning rate (Adam)."),
    steps: int = typer.Option(10, "--steps", help="Inner attack steps (pgd-at, trades)."),
    step_size: float | None = typer.Option(
        None,
        "--step-size",
        help="Inner attack step (default 2.5*eps/steps; fast-at eps/4 with --fast-init prior, 1.25*eps with random).",
    ),
    lr_schedule: str = typer.Option(
        "constant",
        "--lr-schedule",
        help="constant, cosine (decay to 0) or cyclic (Wong et al.'s triangle, peak --lr at 40%).",
    ),
    holdout: bool = typer.Option(
        True,
        "--holdout/--no-holdout",
        help="Keep the 256 monitoring inputs out of training (default), or train on every input and monitor 256 of them.",
    ),
    fast_init: str = typer.Option(
        "prior",
        "--fast-init",
        help="fast-at's start: prior (each example's perturbation from its previous epoch; ATTA, Zheng et al. 2020) or random (uniform, Wong et al. 2020).",
    ),
    beta: float = typer.Option(6.0, "--beta", help="TRADES' robustness weight."),
    eps_warmup: int = typer.Option(0, "--eps-warmup", help="Epochs over which eps ramps up linearly from 0."),
    from_scratch: bool = typer.Option(
        False, "--from-scratch", help="Re-initialise the weights (seeded) instead of fine-tuning them."
    ),
    checkpoint: str | None = typer.Option(
        None, "--checkpoint", help="Checkpoint file written every epoch; the same command resumes from it."
    ),
    record: str | None = typer.Option(None, "--record", help="JSON training record (default: OUT with .json)."),
    arch: str | None = typer.Option(
        None, "--arch", help="Architecture name (for weights-only files, and to name the output's architecture)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for shuffling, random starts and --from-scratch initialisation."),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object (the training record)."),
) -> None:
    """Adversarially train a torch model and write it as safetensors plus a JSON training record.

    The output file's metadata names the architecture and the training parameters, so `--model OUT`
    loads it back for `bastion attack` and `bastion audit`. Per epoch: clean and PGD accuracy on
    held-out training inputs. fast-at stops (restoring the best epoch) when PGD accuracy collapses
    (catastrophic overfitting).
    """
    from pathlib import Path

    from ..data import load_dataset
    from ..defenses.training import DEFENSES, FAST_INITS, LR_SCHEDULES, AdversarialTrainingConfig, adversarial_train
    from ..models.loading import load_model
    from ..models.torch import TorchClassifier

    if defense not in (*DEFENSES, "gaussian"):
        _fail(f"--defense: unknown defense {defense!r}; choose one of {', '.join(DEFENSES)}, gaussian")
    if lr_schedule not in LR_SCHEDULES:
        _fail(f"--lr-schedule: unknown schedule {lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
    if fast_init not in FAST_INITS:
        _fail(f"--fast-init: unknown start {fast_init!r}; choose one of {', '.join(FAST_INITS)}")
    if defense == "gaussian" and (sigma is None or not sigma > 0):
        _fail("--defense gaussian needs --sigma > 0 (the noise level the model will be smoothed with)")
    if not out.endswith(".safetensors"):
        _fail(f"--out must end with .safetensors, got {out!r}")
    if Path(out).is_dir():
        _fail(f"--out: {out} is a directory")
    config = AdversarialTrainingConfig(
        defense="pgd-at" if defense == "gaussian" else defense,
        eps=eps,
        norm=norm,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        attack_steps=steps,
        step_size=step_size,
        beta=beta,
        eps_warmup=eps_warmup,
        fast_init=fast_init,
        holdout=holdout,
        lr_schedule=lr_schedule,
        seed=seed,
    )
    try:
        clf = load_model(model, arch=arch, log=None if as_json else _log)
    except (UsageError, ValueError):
        raise
    except Exception as exc:
        _fail(f"--model: cannot load {model!r}: {type(exc).__name__}: {exc}")
    if not isinstance(clf, TorchClassifier):
        _fail(
            f"--model: {model} is not a torch model ({type(clf).__name__}); adversarial training needs gradients "
            "and weights to update"
        )
    arch_name = arch or clf.arch
    if arch_name is None:
        _fail(
            "--arch: the model's architecture is not known (a factory or TorchScript model); name the registered "
            "architecture its weights fit so the output loads back"
        )
    ds = load_dataset(data)
    if tuple(ds.input_shape) != tuple(clf.input_shape):
        _fail(
            f"--data: {data} has inputs of shape {tuple(ds.input_shape)} but the model expects {tuple(clf.input_shape)}"
        )

    bar: Any = None

    def show(entry: dict[str, Any]) -> None:
        if as_json:
            return
        flag = "  catastrophic overfitting" if entry.get("catastrophic_overfitting") else ""
        line = (
            f"epoch {entry['epoch']}/{epochs}  loss {entry['loss']:.4f}  clean {entry['val_clean_accuracy']:.3f}  "
            f"robust {entry['val_robust_accuracy']:.3f}  ({entry['seconds']:.1f} s){flag}"
        )
        if bar is not None:
            bar.console.print(line, markup=False, highlight=False)
            bar.update(
                task, completed=entry["epoch"], clean=entry["val_clean_accuracy"], robust=entry["val_robust_accuracy"]
            )
        else:
            _log(line)

    if defense == "gaussian":
        _harden_gaussian(
            clf,
            ds,
            sigma,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            out=out,
            record=record,
            arch=arch_name,
            model=model,
            data=data,
            as_json=as_json,
        )
        return
    try:
        if not as_json and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(
                TextColumn(f"{defense} eps={eps}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("clean {task.fields[clean]:.3f}  robust {task.fields[robust]:.3f}"),
                TimeElapsedColumn(),
                transient=True,
            ) as bar:
                task = bar.add_task("epochs", total=epochs, clean=float("nan"), robust=float("nan"))
                hardened, rec = adversarial_train(
                    clf, ds, config, from_scratch=from_scratch, checkpoint=checkpoint, on_epoch=show
                )
        else:
            hardened, rec = adversarial_train(
                clf, ds, config, from_scratch=from_scratch, checkpoint=checkpoint, on_epoch=show
            )
    except KeyboardInterrupt:
        typer.echo(
            "\ninterrupted" + (f": run the same command to resume from {checkpoint}" if checkpoint else ""), err=True
        )
        raise typer.Exit(130) from None
    rec.update({"model": model, "data": data, "arch": arch_name, "out": out})
    rec_path = _write_hardened(hardened, out, arch_name, rec, record)
    if as_json:
        typer.echo(json.dumps(rec))
    else:
        fin = rec["final"]
        typer.echo(
            f"saved {out} ({defense}, eps={eps}, {len(rec['epochs'])} epochs, {rec['seconds']:.1f} s): held-out "
            f"clean {fin.get('val_clean_accuracy', float('nan')):.3f}, PGD-{config.eval_steps} robust "
            f"{fin.get('val_robust_accuracy', float('nan')):.3f}; record {rec_path}"
        )
