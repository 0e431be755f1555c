"""``bastion harden --defense dp-sgd``: DP-SGD through Opacus, from scratch (``--arch``) or fine-tuning (``--model``).

The work is the library's (:func:`bastion.defenses.privacy.dp_train`); this module checks the options, shows the
epochs with the epsilon spent so far, and writes the model with its privacy record (epsilon spent, delta, noise
multiplier, clipping norm, sampling rate, accountant) in the file's metadata and beside it as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import typer

from .common import echo_json, load_arch_data, load_model_option, refuse, resumable
from .common import log as _log
from .groups import OptionGroup

Epsilon = Annotated[
    float | None, typer.Option("--epsilon", help="dp-sgd: the target epsilon over the run (default 3).")
]
Delta = Annotated[float | None, typer.Option("--delta", help="dp-sgd: the target delta, below 1/N (default 1e-5).")]
MaxGradNorm = Annotated[
    float | None, typer.Option("--max-grad-norm", help="dp-sgd: the per-example clipping norm (default 1.0).")
]
NoiseMultiplier = Annotated[
    float | None,
    typer.Option(
        "--noise-multiplier", help="dp-sgd: a fixed noise multiplier instead of --epsilon (0: no noise, no privacy)."
    ),
]
Accountant = Annotated[str | None, typer.Option("--accountant", help="dp-sgd: prv (default), rdp or gdp.")]
Secure = Annotated[
    bool,
    typer.Option(
        "--secure", help="dp-sgd: cryptographically strong noise and sampling (Opacus' secure mode, or os.urandom)."
    ),
]


@dataclass(frozen=True)
class DPBudget(OptionGroup):
    """What DP-SGD aims at: the target epsilon and delta and the clipping norm (``None``: the architecture's DP
    recipe decides); the options ``bastion harden --defense dp-sgd`` and ``bastion privacy audit`` share."""

    epsilon: Epsilon = None
    delta: Delta = None
    max_grad_norm: MaxGradNorm = None

    def flags(self) -> dict[str, Any]:
        """The options by their flags (``--max-grad-norm``), in order."""
        return {f"--{k.replace('_', '-')}": v for k, v in self.named().items()}


@dataclass(frozen=True)
class DPOptions(DPBudget):
    """The command line's DP-SGD options (``None``: the architecture's DP recipe decides); one parameter of
    ``bastion harden``."""

    noise_multiplier: NoiseMultiplier = None
    accountant: Accountant = None
    secure: Secure = False

    def refuse_given(self) -> None:
        """Refuse the DP-only options when another defence was chosen."""
        named = self.flags() | {"--secure": self.secure or None}
        given = [k for k, v in named.items() if v is not None]
        if given:
            refuse(f"{', '.join(given)}: only for --defense dp-sgd")


def _module(model: str | None, arch: str | None, loading: dict[str, Any], say: Any) -> tuple[Any, str]:
    """The module to train (a fresh seeded one for ``--arch`` alone; the model's weights with ``--model``)."""
    import copy

    from ..models.torch import TorchClassifier

    if model is None:
        if arch is None:
            refuse("--defense dp-sgd needs --arch A (train from scratch) or --model M (fine-tune M)")
        return None, str(arch)
    clf = load_model_option(model, arch=arch, log=say, **loading)
    if not isinstance(clf, TorchClassifier):
        refuse(f"--model: {model} is not a torch model ({type(clf).__name__}); DP-SGD needs per-example gradients")
    arch_name = arch or clf.arch
    if arch_name is None:
        refuse("--arch: the model's architecture is not known; name the registered architecture its weights fit")
    module = copy.deepcopy(clf.module)
    for p in module.parameters():
        p.requires_grad_(True)
    return module, arch_name


def _line(entry: dict[str, Any], epochs: int) -> str:
    eps = entry.get("epsilon")
    spent = "inf (no noise)" if eps is None else f"{eps:.3f}"
    return f"epoch {entry['epoch']}/{epochs}  loss {entry['loss']:.4f}  epsilon {spent}  ({entry['seconds']:.1f} s)"


def dp_harden(
    model: str | None,
    arch: str | None,
    data: str,
    options: DPOptions,
    training: dict[str, Any],
    paths: dict[str, str | None],
    loading: dict[str, Any],
    label_column: str | None,
    as_json: bool,
) -> None:
    """Train with DP-SGD and save; print the record (``--json``) or a one-line summary. ``training``: ``epochs``,
    ``batch_size``, ``lr`` and ``seed`` (``None``: the recipe's); ``paths``: ``out``, ``checkpoint``, ``record``."""
    out, checkpoint, record = str(paths["out"]), paths["checkpoint"], paths["record"]
    from ..defenses.privacy import dp_config_for, dp_fix, dp_train, dp_train_architecture
    from ..training import accuracy, save_trained

    say = None if as_json else _log
    module, arch_name = _module(model, arch, loading, say)
    ds = load_arch_data(data, arch_name, label_column=label_column, say=say)
    if module is not None:
        dp_fix(module, fix=False)  # the output must load back as arch_name: refuse rather than change layers
    config = dp_config_for(arch_name, **options.named(), **training)  # by name; None: the recipe's
    kwargs: dict[str, Any] = {
        "checkpoint": checkpoint,
        "log": say,
        "on_epoch": None if as_json else (lambda e: _log(_line(e, config.epochs))),
    }
    with resumable(checkpoint):
        if module is None:
            trained = dp_train_architecture(arch_name, ds.x_train, ds.y_train, config, **kwargs)
        else:
            trained = dp_train(module, ds.x_train, ds.y_train, config, fix=False, **kwargs)
    rec = trained.record
    rec["clean_accuracy"] = accuracy(trained.module, ds.x_test, ds.y_test) if ds.x_test.numel() else None
    rec.update({"model": model, "data": data, "arch": arch_name, "out": out})
    rec_path = save_trained(trained.module, out, rec, arch=arch_name, record_path=record)
    if as_json:
        echo_json(rec, default=None)
        return
    eps = "inf (no noise: no privacy)" if rec["epsilon"] is None else f"{rec['epsilon']:.3f}"
    acc = "n/a" if rec["clean_accuracy"] is None else f"{rec['clean_accuracy']:.3f}"
    typer.echo(
        f"saved {out} (dp-sgd, epsilon {eps} spent at delta {rec['delta']:g}, noise multiplier "
        f"{rec['noise_multiplier']:.3f}, clipping {rec['max_grad_norm']:g}, sampling rate {rec['sample_rate']:.4f}, "
        f"{rec['accountant']} accountant, {len(rec['epochs'])} epochs, {rec['seconds']:.1f} s): test accuracy {acc}; "
        f"record {rec_path}"
    )
