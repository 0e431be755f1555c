"""``bastion harden``: adversarial training, Gaussian-noise training and DP-SGD from the command line (registered
by :mod:`bastion.cli`). The work is the library's (:func:`bastion.defenses.training.adversarial_train`,
:func:`bastion.defenses.certification.gaussian_harden`, :func:`bastion.defenses.privacy.dp_train` through
:mod:`.harden_dp`, :func:`bastion.training.save_trained`); this module checks the options, shows progress and
prints the result."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import INPUT_SHAPE_HELP, LABEL_COLUMN_HELP, N_CLASSES_HELP, load_data_option, load_model_option, resumable
from .common import log as _log
from .common import refuse as _fail
from .groups import OptionGroup, expand_groups
from .harden_dp import DPOptions, dp_harden

# the options, named once: the command's signature stays one line per option
MODEL = typer.Option(
    None,
    "--model",
    "-m",
    help="The torch model to harden: zoo:NAME, a .safetensors file, or module:function (dp-sgd: omit it and give --arch to train from scratch).",
)
DATA = typer.Option(
    ..., "--data", "-d", help="Built-in dataset name or a .npz/.csv file or image folder (its training split is used)."
)
DEFENSE = typer.Option(
    ...,
    "--defense",
    help="pgd-at (Madry et al.), trades (Zhang et al.), fast-at (one FGSM step per epoch; see --fast-init), gaussian (noise training for randomized smoothing, Cohen et al.), or dp-sgd (differential privacy through Opacus, Abadi et al.; see --epsilon).",
)
SIGMA = typer.Option(None, "--sigma", help="With --defense gaussian: the noise level (input units).")
OUT = typer.Option(..., "--out", "-o", help="Output .safetensors file; loads back with --model OUT anywhere.")
EPS = typer.Option(0.3, "--eps", help="Perturbation budget trained against (input units).")
NORM = typer.Option("linf", "--norm", help="linf or l2.")
EPOCHS = typer.Option(None, "--epochs", help="Training epochs (default 10; dp-sgd: the architecture's DP recipe).")
BATCH_SIZE = typer.Option(
    None, "--batch-size", help="Training batch size (default 128; dp-sgd: the expected Poisson batch of its recipe)."
)
LR = typer.Option(None, "--lr", help="Learning rate (default 1e-3 with Adam; dp-sgd: SGD at its recipe's rate).")
FROM_SCRATCH = typer.Option(
    False, "--from-scratch", help="Re-initialise the weights (seeded) instead of fine-tuning them."
)
CHECKPOINT = typer.Option(
    None, "--checkpoint", help="Checkpoint file written every epoch; the same command resumes from it."
)
RECORD = typer.Option(None, "--record", help="JSON training record (default: OUT with .json).")
ARCH = typer.Option(
    None, "--arch", help="Architecture name (for weights-only files, and to name the output's architecture)."
)
INPUT_SHAPE = typer.Option(None, "--input-shape", help=INPUT_SHAPE_HELP)
N_CLASSES = typer.Option(None, "--n-classes", help=N_CLASSES_HELP)
LABEL_COLUMN = typer.Option(None, "--label-column", help=LABEL_COLUMN_HELP)
SEED = typer.Option(0, "--seed", help="Seed for shuffling, random starts, noise and --from-scratch initialisation.")
JSON_OUT = typer.Option(False, "--json", help="Print exactly one JSON object (the training record).")
# the adversarial-training options: one option group (fields annotated with their options)
Steps = Annotated[int, typer.Option("--steps", help="Inner attack steps (pgd-at, trades).")]
StepSize = Annotated[
    float | None,
    typer.Option(
        "--step-size",
        help="Inner attack step (default 2.5*eps/steps; fast-at eps/4 with --fast-init prior, 1.25*eps with random).",
    ),
]
LrSchedule = Annotated[
    str,
    typer.Option(
        "--lr-schedule", help="constant, cosine (decay to 0) or cyclic (Wong et al.'s triangle, peak --lr at 40%)."
    ),
]
Holdout = Annotated[
    bool,
    typer.Option(
        "--holdout/--no-holdout",
        help="Keep the 256 monitoring inputs out of training (default), or train on every input and monitor 256 of them.",
    ),
]
FastInit = Annotated[
    str,
    typer.Option(
        "--fast-init",
        help="fast-at's start: prior (each example's perturbation from its previous epoch; ATTA, Zheng et al. 2020) or random (uniform, Wong et al. 2020).",
    ),
]
Beta = Annotated[float, typer.Option("--beta", help="TRADES' robustness weight.")]
EpsWarmup = Annotated[int, typer.Option("--eps-warmup", help="Epochs over which eps ramps up linearly from 0.")]


@dataclass(frozen=True)
class AdversarialOptions(OptionGroup):
    """The adversarial-training options that go to its configuration as given (one parameter of the command)."""

    steps: Steps = 10
    step_size: StepSize = None
    lr_schedule: LrSchedule = "constant"
    holdout: Holdout = True
    fast_init: FastInit = "prior"
    beta: Beta = 6.0
    eps_warmup: EpsWarmup = 0


def _check_options(
    defense: str, sigma: float | None, out: str, paths: dict[str, str | None], adversarial: AdversarialOptions
) -> str:
    """Refuse what would fail after the training (an unknown name, a missing sigma, an unusable output path);
    return the defence's canonical name."""
    import difflib

    from ..defenses.training import FAST_INITS, LR_SCHEDULES, adversarial_defenses
    from ..training import TRAINING_STEPS

    choices = (*adversarial_defenses(), "gaussian", "dp-sgd")
    name = TRAINING_STEPS.canonical(defense)
    if name not in choices:
        close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        _fail(f"--defense: unknown defense {defense!r}{hint}; choose one of {', '.join(choices)}")
    lr_schedule, fast_init = adversarial.lr_schedule, adversarial.fast_init
    if lr_schedule not in LR_SCHEDULES:
        _fail(f"--lr-schedule: unknown schedule {lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
    if fast_init not in FAST_INITS:
        _fail(f"--fast-init: unknown start {fast_init!r}; choose one of {', '.join(FAST_INITS)}")
    if name == "gaussian" and (sigma is None or not sigma > 0):
        _fail("--defense gaussian needs --sigma > 0 (the noise level the model will be smoothed with)")
    if not out.endswith(".safetensors"):
        _fail(f"--out must end with .safetensors, got {out!r}")
    for option, path in {"--out": out, **paths}.items():
        if path is None:
            continue
        if Path(path).is_dir():
            _fail(f"{option}: {path} is a directory")
        parent = next(q for q in Path(path).absolute().parents if q.exists())
        if not parent.is_dir():
            _fail(f"{option}: {parent} is a file, not a folder")
    return name


def _load(
    model: str, data: str, arch: str | None, loading: dict[str, Any], label_column: str | None, as_json: bool
) -> tuple[Any, Any, str]:
    """The torch model, the dataset and the architecture name the output will be saved under; ``loading``: the
    model's ``input_shape`` and ``n_classes`` options."""
    from ..models.torch import TorchClassifier

    log = None if as_json else _log
    clf = load_model_option(model, arch=arch, log=log, **loading)
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
    ds = load_data_option(data, label_column=label_column, log=log)
    if tuple(ds.input_shape) != tuple(clf.input_shape):
        _fail(
            f"--data: {data} has inputs of shape {tuple(ds.input_shape)} but the model expects {tuple(clf.input_shape)}"
        )
    return clf, ds, arch_name


@contextlib.contextmanager
def _epoch_display(title: str, epochs: int, as_json: bool) -> Iterator[Callable[[dict[str, Any]], None]]:
    """An ``on_epoch`` callback that prints each adversarial-training epoch (under a rich bar on a terminal)."""
    import sys

    def line(entry: dict[str, Any]) -> str:
        flag = "  catastrophic overfitting" if entry.get("catastrophic_overfitting") else ""
        return (
            f"epoch {entry['epoch']}/{epochs}  loss {entry['loss']:.4f}  clean {entry['val_clean_accuracy']:.3f}  "
            f"robust {entry['val_robust_accuracy']:.3f}  ({entry['seconds']:.1f} s){flag}"
        )

    if as_json:
        yield lambda entry: None
        return
    if not sys.stderr.isatty():
        yield lambda entry: _log(line(entry))
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("clean {task.fields[clean]:.3f}  robust {task.fields[robust]:.3f}"), TimeElapsedColumn())
    with Progress(TextColumn(title), BarColumn(), MofNCompleteColumn(), *columns, transient=True) as bar:
        task = bar.add_task("epochs", total=epochs, clean=float("nan"), robust=float("nan"))

        def show(entry: dict[str, Any]) -> None:
            bar.console.print(line(entry), markup=False, highlight=False)
            clean, robust = entry["val_clean_accuracy"], entry["val_robust_accuracy"]
            bar.update(task, completed=entry["epoch"], clean=clean, robust=robust)

        yield show


def _adversarial(clf: Any, ds: Any, config: Any, from_scratch: bool, checkpoint: str | None, as_json: bool) -> Any:
    """Adversarial training with progress; on Ctrl-C, say how to resume."""
    from ..defenses.training import adversarial_train

    with resumable(checkpoint), _epoch_display(f"{config.defense} eps={config.eps}", config.epochs, as_json) as show:
        return adversarial_train(clf, ds, config, from_scratch=from_scratch, checkpoint=checkpoint, on_epoch=show)


def _summary(rec: dict[str, Any], out: str, rec_path: Path) -> str:
    cfg = rec["config"]
    if cfg["defense"] == "gaussian":
        return (
            f"saved {out} (gaussian noise, sigma={cfg['sigma']:g}, {cfg['epochs']} epochs, {rec['seconds']:.1f} s): "
            f"test accuracy {rec['test_accuracy']:.3f}, under noise {rec['test_accuracy_under_noise']:.3f}; "
            f"audit it with --smooth {cfg['sigma']:g}; record {rec_path}"
        )
    fin = rec["final"]
    return (
        f"saved {out} ({cfg['defense']}, eps={cfg['eps']}, {len(rec['epochs'])} epochs, {rec['seconds']:.1f} s): "
        f"held-out clean {fin.get('val_clean_accuracy', float('nan')):.3f}, PGD-{cfg['eval_steps']} robust "
        f"{fin.get('val_robust_accuracy', float('nan')):.3f}; record {rec_path}"
    )


@expand_groups
def harden(
    model: str | None = MODEL,
    data: str = DATA,
    defense: str = DEFENSE,
    sigma: float | None = SIGMA,
    out: str = OUT,
    eps: float = EPS,
    norm: str = NORM,
    epochs: int | None = EPOCHS,
    batch_size: int | None = BATCH_SIZE,
    lr: float | None = LR,
    adversarial: AdversarialOptions = AdversarialOptions(),
    from_scratch: bool = FROM_SCRATCH,
    checkpoint: str | None = CHECKPOINT,
    record: str | None = RECORD,
    arch: str | None = ARCH,
    input_shape: str | None = INPUT_SHAPE,
    n_classes: int | None = N_CLASSES,
    label_column: str | None = LABEL_COLUMN,
    seed: int = SEED,
    dp: DPOptions = DPOptions(),
    as_json: bool = JSON_OUT,
) -> None:
    """Harden a torch model; write it as safetensors (its metadata names the architecture and the training, so
    `--model OUT` loads it anywhere) plus a JSON record. Adversarial training shows clean and PGD accuracy per epoch
    (fast-at stops at catastrophic overfitting); dp-sgd the epsilon spent, and records epsilon, delta, noise
    multiplier, clipping norm, sampling rate and accountant."""
    from ..defenses.certification import gaussian_harden
    from ..defenses.training import AdversarialTrainingConfig
    from ..training import save_trained

    name = _check_options(defense, sigma, out, {"--record": record, "--checkpoint": checkpoint}, adversarial)
    loading = {"input_shape": input_shape, "n_classes": n_classes}
    if name == "dp-sgd":
        training = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed}
        paths = {"out": out, "checkpoint": checkpoint, "record": record}
        return dp_harden(model, arch, data, dp, training, paths, loading, label_column, as_json)
    dp.refuse_given()
    if model is None:
        _fail(f"--defense {name} needs --model (the torch model to harden)")
    epochs, batch_size, lr = epochs or 10, batch_size or 128, lr if lr is not None else 1e-3
    config = AdversarialTrainingConfig(  # validates the numbers (for gaussian too: epochs, batch size, lr)
        defense="pgd-at" if name == "gaussian" else name, eps=eps, norm=norm, epochs=epochs, batch_size=batch_size,
        lr=lr, seed=seed, **adversarial.named(steps="attack_steps"),
    )  # fmt: skip
    clf, ds, arch_name = _load(model, data, arch, loading, label_column, as_json)
    if name == "gaussian":
        on_epoch = None if as_json else (lambda e, loss: _log(f"epoch {e + 1}/{epochs}  loss {loss:.4f}"))
        hardened, rec = gaussian_harden(
            clf, ds, sigma or 0.0, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, on_epoch=on_epoch
        )
    else:
        hardened, rec = _adversarial(clf, ds, config, from_scratch, checkpoint, as_json)
    rec.update({"model": model, "data": data, "arch": arch_name, "out": out})
    rec_path = save_trained(hardened, out, rec, arch=arch_name, record_path=record)
    typer.echo(json.dumps(rec) if as_json else _summary(rec, out, rec_path))
