"""``bastion poison``: poison a training set, write it, and optionally train a recipe on it and measure.

Every option is checked and the attack built before any data is read or work done; the output paths are
checked first of all, so a typo costs nothing and nothing is written on a usage error. The work is the
library's (:mod:`bastion.attacks.poisoning`: the attack's ``poison``, :func:`~bastion.attacks.poisoning.
run_poisoning`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Annotated, Any

import typer

from .common import LabelColumn, check_output_file, emit, json_help, load_data_option, refuse
from .common import log as _log
from .groups import OptionGroup, expand_groups

JSON_KEYS = ("attack", "n_poisoned", "rate", "out", "record")
"""Always in ``--json``; with ``--train-arch`` also ``attack_success_rate`` (backdoors; for label flipping the
accuracy drop), ``clean_accuracy``, ``clean_model_accuracy``, ``accuracy_drop``, ``model_out`` (and
``targets_hit`` for feature collision)."""

Data = Annotated[
    str, typer.Option(..., "--data", "-d", help="Built-in dataset or a .npz/.csv file or image folder to poison.")
]
AttackName = Annotated[
    str,
    typer.Option(
        ...,
        "--attack",
        "-a",
        help="badnets (patch trigger), blend (blended trigger), label-flip, clean-label, feature-collision.",
    ),
]
Out = Annotated[
    str,
    typer.Option(
        ..., "--out", "-o", help="The poisoned dataset (.npz, loadable with --data); the record goes to OUT.json."
    ),
]
Rate = Annotated[float | None, typer.Option("--rate", help="Share of the training split to poison, in (0, 1).")]
Target = Annotated[int | None, typer.Option("--target", help="The target label (backdoors, targeted attacks).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the attack (which records, random placements).")]
TriggerImage = Annotated[
    str | None, typer.Option("--trigger-image", help="A PNG/JPEG trigger: smaller than the input = a patch.")
]
AllToAll = Annotated[
    bool, typer.Option("--all-to-all", help="Backdoors: class c becomes c+1 mod K instead of --target.")
]
Size = Annotated[int | None, typer.Option("--size", help="badnets/clean-label: the patch's side in pixels.")]
Location = Annotated[
    str | None,
    typer.Option("--location", help="badnets: bottom-right, bottom-left, top-right, top-left, center or random."),
]
Alpha = Annotated[float | None, typer.Option("--alpha", help="blend: the trigger's opacity in (0, 1].")]
Strategy = Annotated[str | None, typer.Option("--strategy", help="label-flip: random, pair or loss-max.")]
Source = Annotated[int | None, typer.Option("--source", help="label-flip --strategy pair: the class to flip.")]
Eps = Annotated[float | None, typer.Option("--eps", help="clean-label/feature-collision: perturbation budget.")]
Option = Annotated[
    list[str] | None,
    typer.Option("--option", help="Any other parameter of the attack, KEY=VALUE (repeatable; VALUE read as JSON)."),
]
TrainArch = Annotated[
    str | None,
    typer.Option("--train-arch", help="Train this registered architecture on the poisoned data and measure it."),
]
ModelOut = Annotated[
    str | None, typer.Option("--model-out", help="With --train-arch: write the poisoned model (.safetensors).")
]
Epochs = Annotated[int | None, typer.Option("--epochs", help="With --train-arch: override the recipe's epochs.")]
AsJson = Annotated[bool, typer.Option("--json", help=json_help(JSON_KEYS, " (+ metrics with training)."))]


@dataclass(frozen=True)
class AttackParams(OptionGroup):
    """The attack parameters that have a flag of their own (any other: ``--option KEY=VALUE``)."""

    rate: Rate = None
    target: Target = None
    seed: Seed = 0
    trigger_image: TriggerImage = None
    all_to_all: AllToAll = False
    size: Size = None
    location: Location = None
    alpha: Alpha = None
    strategy: Strategy = None
    source: Source = None
    eps: Eps = None

    def given(self) -> dict[str, Any]:
        """Every parameter by name, ``None`` where its flag was not given (``--all-to-all`` too)."""
        return self.named() | {"all_to_all": self.all_to_all or None}


@dataclass(frozen=True)
class Training(OptionGroup):
    """``--train-arch`` and what goes with it: train that architecture on the poisoned data and measure it."""

    train_arch: TrainArch = None
    model_out: ModelOut = None
    epochs: Epochs = None

    def check(self) -> None:
        """Refuse what would fail after the poisoning: ``--model-out`` without ``--train-arch`` or of another
        format, an unusable path, an unknown architecture, ``--epochs`` below 1."""
        if self.model_out is not None:
            if self.train_arch is None:
                refuse("--model-out needs --train-arch (the architecture to train on the poisoned data)")
            check_output_file(self.model_out, "--model-out", suffix=".safetensors")
        if self.train_arch is not None:
            from ..models.architectures import ARCHITECTURES

            ARCHITECTURES.get(self.train_arch)
        if self.epochs is not None and self.epochs < 1:
            refuse(f"--epochs must be >= 1, got {self.epochs}")


def _attack_kwargs(cls: type, given: dict[str, Any], options: list[str]) -> dict[str, Any]:
    """The attack's constructor arguments from the flags that were given and ``--option KEY=VALUE``; a flag or key
    the attack does not take is a usage error naming what it takes."""
    names = {f.name for f in fields(cls)} - {"generator", "trigger"}
    kwargs: dict[str, Any] = {}
    for opt in options:
        key, sep, text = opt.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            refuse(f"--option takes KEY=VALUE, got {opt!r}")
        try:
            kwargs[key] = json.loads(text)
        except json.JSONDecodeError:
            kwargs[key] = text
    for key, value in given.items():
        if value is not None:
            kwargs[key] = value
    unknown = sorted(set(kwargs) - names)
    if unknown:
        flags = ", ".join("--" + k.replace("_", "-") if k in given else f"--option {k}=..." for k in unknown)
        takes = ", ".join("--" + k.replace("_", "-") if k in given else f"--option {k}=..." for k in sorted(names))
        refuse(f"{cls.name} does not take {flags}; it takes {takes}")  # type: ignore[attr-defined]
    return kwargs


def _build(attack: str, given: dict[str, Any], options: list[str]) -> Any:
    from ..attacks.poisoning import POISONING_ATTACKS

    cls = POISONING_ATTACKS.get(attack)
    return cls(**_attack_kwargs(cls, given, options))


@expand_groups
def poison(
    data: Data,
    attack: AttackName,
    out: Out,
    params: AttackParams = AttackParams(),
    option: Option = None,
    training: Training = Training(),
    label_column: LabelColumn = None,
    as_json: AsJson = False,
) -> None:
    """Poison a training set: write the poisoned dataset (.npz) and a JSON record of exactly what changed.

    With --train-arch, also train that architecture on the poisoned data with the zoo's recipe and measure it next
    to the same recipe on clean data: the backdoor's attack success rate (triggered test inputs of other classes
    classified as the target) and the clean accuracy of both models."""
    check_output_file(out, "--out", suffix=".npz", what="the poisoned dataset is")
    training.check()
    atk = _build(attack, params.given(), option or [])
    say = None if as_json else _log
    ds = load_data_option(data, label_column=label_column, log=say)
    result = _run(atk, ds, out, training, params.seed, say)
    emit(result, as_json, _print, default=None, finite_values=True)


def _run(atk: Any, ds: Any, out: str, training: Training, seed: int, say: Any) -> dict[str, Any]:
    from ..attacks.poisoning import run_poisoning

    train_arch, model_out = training.train_arch, training.model_out
    if train_arch is None:
        poisoned = atk.poison(ds)
        metrics: dict[str, Any] = {}
    else:
        run = run_poisoning(atk, ds, train_arch, epochs=training.epochs, seed=seed, log=say)
        poisoned, metrics = run.poisoned, dict(run.metrics)
        if "attack_success_rate" not in metrics and "targets_hit" not in metrics:
            metrics["attack_success_rate"] = metrics["accuracy_drop"]  # label flipping: what it costs the model
        if model_out is not None:
            from ..models.saving import save_model

            save_model(run.model, model_out, arch=train_arch, metadata={"bastion_record": json.dumps(run.record)})
            metrics["model_out"] = model_out
    _, record = poisoned.save(out)
    return {
        "attack": poisoned.attack,
        "n_poisoned": poisoned.n_poisoned,
        "rate": poisoned.rate,
        "n_inputs": int(poisoned.data.x_train.shape[0]),
        "out": out,
        "record": str(record),
        **metrics,
    }


def _print(result: dict[str, Any]) -> None:
    typer.echo(
        f"{result['attack']}: poisoned {result['n_poisoned']} of {result['n_inputs']} training records "
        f"({result['rate']:.2%}); wrote {result['out']} and {result['record']}"
    )
    rows = [
        ("attack success rate", "attack_success_rate"),
        ("targets hit", "targets_hit"),
        ("clean accuracy (poisoned model)", "clean_accuracy"),
        ("clean accuracy (clean model)", "clean_model_accuracy"),
        ("trigger on the clean model", "clean_model_attack_success_rate"),
    ]
    for label, key in rows:
        if key in result:
            typer.echo(f"  {label:<34} {result[key]:.4f}")
    if "model_out" in result:
        typer.echo(f"  poisoned model written to {result['model_out']}")
