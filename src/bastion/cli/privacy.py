"""``bastion privacy``: how much a model leaks about its training data (membership inference).

Game mode (``--arch`` or ``--train-function``, no ``--model``) measures a training recipe; audit mode
(``--model``) measures a given model, its training split taken as the members. The work is the library's
(:mod:`bastion.attacks.inference.membership`); reference models are cached, so an interrupted run resumes
with the models it finished.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Annotated, Any

import typer

from .common import (
    DATA_HELP,
    InputShape,
    LabelColumn,
    NClasses,
    RecipeEpochs,
    emit,
    json_help,
    load_data_option,
    load_model_option,
    refuse,
)
from .common import log as _log
from .groups import expand_groups
from .scaleopts import ScaleOptions, executor_for

JSON_KEYS = ("mode", "attacks", "target", "references", "n_inputs")

OptionalData = Annotated[str | None, typer.Option("--data", "-d", help=DATA_HELP)]
ModelOpt = Annotated[
    str | None, typer.Option("--model", "-m", help="Audit mode: the model to measure (its training split = members).")
]
ArchOpt = Annotated[
    str | None, typer.Option("--arch", help="The recipe: a registered architecture trained with its zoo recipe.")
]
TrainFunction = Annotated[
    str | None,
    typer.Option("--train-function", help="The recipe: module:function(dataset, seed) returning a trained model."),
]
TrainSize = Annotated[
    int | None, typer.Option("--train-size", help="Game mode: the target's training records N (population 2N).")
]
Attacks = Annotated[
    str,
    typer.Option(
        "--attacks",
        help="Comma-separated: loss, confidence, entropy, modified-entropy, lira, lira-offline, rmia, rmia-online, "
        "shadow, label-only.",
    ),
]
References = Annotated[int, typer.Option("--references", help="Reference (shadow) models to train (cached).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the population draw, the halves and the training.")]
AsJson = Annotated[bool, typer.Option("--json", help=json_help(JSON_KEYS))]


def _recipe(arch: str | None, train_function: str | None, epochs: int | None) -> Any:
    from ..attacks.inference.membership import Recipe
    from ..models.training import TRAIN_CONFIGS, TrainConfig

    if arch is None and train_function is None:
        return None
    if arch is not None and train_function is not None:
        refuse("give --arch or --train-function, not both")
    if epochs is not None and epochs < 1:
        refuse(f"--epochs must be >= 1, got {epochs}")
    if arch is None:
        if epochs is not None:
            refuse("--epochs applies to an --arch recipe; a --train-function trains its own way")
        return Recipe(function=train_function)
    config = TRAIN_CONFIGS.get(arch, TrainConfig())
    return Recipe(arch=arch, config=dataclasses.replace(config, epochs=epochs) if epochs else None)


def _attacks(text: str, references: int) -> list[Any]:
    from ..attacks.inference.membership import get_membership_attack

    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        refuse("--attacks: name at least one attack")
    attacks = [get_membership_attack(n) for n in names]
    needy = [a.name for a in attacks if a.needs_references]
    if needy and references < 1:
        refuse(f"{', '.join(needy)} need reference models: pass --references K (e.g. 16)")
    return attacks


def _bar(quiet: bool) -> Any:
    """A progress callback over the reference models: a rich bar on a terminal, else lines on stderr."""
    if quiet:
        return None

    def line(done: int, total: int) -> None:
        _log(f"reference model {done}/{total}")

    return line if not sys.stderr.isatty() else _rich_bar()


def _rich_bar() -> Any:
    from rich.progress import Progress

    bar = Progress(transient=True)
    task: list[Any] = []

    def update(done: int, total: int) -> None:
        if not task:
            bar.start()
            task.append(bar.add_task("reference models", total=total))
        bar.update(task[0], completed=done)
        if done >= total:
            bar.stop()

    return update


@expand_groups
def privacy(
    ctx: typer.Context,
    data: OptionalData = None,
    model: ModelOpt = None,
    arch: ArchOpt = None,
    train_function: TrainFunction = None,
    train_size: TrainSize = None,
    epochs: RecipeEpochs = None,
    attacks: Attacks = "loss,lira,rmia",
    references: References = 16,
    seed: Seed = 0,
    input_shape: InputShape = None,
    n_classes: NClasses = None,
    label_column: LabelColumn = None,
    scale: ScaleOptions = ScaleOptions(),
    as_json: AsJson = False,
) -> None:
    """Membership inference: how often can an attacker tell a training record from an unseen one?

    Game mode (--arch A or --train-function F, --train-size N): a target trained on a random half of 2N records,
    K reference models on other halves, every record scored. Audit mode (--model M): the model's training split
    are the members, its test split the non-members. Reports ROC AUC, balanced accuracy and the true-positive rate
    at 0.1% and 1% false positives for each attack. --workers N / --ray HOST:PORT train the reference models on
    Ray, one task per model (each model's half and seed come from --seed and its index: the same models).

    `bastion privacy audit` (its own --help) audits a training recipe's differential privacy instead: claimed
    epsilon beside an empirical lower bound from canaries."""
    from ..attacks.inference.membership import membership_audit, membership_game, run_membership_attacks

    if ctx.invoked_subcommand is not None:
        return
    if data is None:
        refuse("--data is required (membership inference); or run `bastion privacy audit --help`")

    recipe = _recipe(arch, train_function, epochs)
    atks = _attacks(attacks, references)
    refs_needed = references if any(a.needs_references for a in atks) else 0
    say = None if as_json else _log
    ds = load_data_option(data, label_column=label_column, log=say)
    progress = _bar(as_json)
    if model is None:
        if recipe is None:
            refuse("give --model (audit mode) or --arch / --train-function with --train-size (game mode)")
        if train_size is None:
            refuse("game mode needs --train-size N (the target's training records; the population is 2N)")
        with executor_for(scale, quiet=as_json) as ex:
            setup = membership_game(
                ds, recipe, train_size=train_size, references=refs_needed, seed=seed, progress=progress, executor=ex
            )
    else:
        if train_size is not None:
            refuse("--train-size is for game mode; in audit mode the members are the data's training split")
        clf = load_model_option(model, arch=arch, input_shape=input_shape, n_classes=n_classes, log=say)
        if recipe is None and refs_needed and getattr(clf, "arch", None):
            recipe = _recipe(clf.arch, None, epochs)
        with executor_for(scale, quiet=as_json) as ex:
            setup = membership_audit(
                clf, ds, recipe=recipe, references=refs_needed, seed=seed, progress=progress, executor=ex
            )
    report = _report(setup, run_membership_attacks(setup, atks))
    emit(report, as_json, _print)


def _report(setup: Any, results: dict[str, Any]) -> dict[str, Any]:
    refs = setup.references
    return {
        "mode": setup.mode,
        "attacks": {
            name: {k: r[k] for k in ("auc", "balanced_accuracy", "tpr_at_fpr", "most_exposed", "seconds")}
            for name, r in results.items()
        },
        "target": {"train_accuracy": setup.train_accuracy, "test_accuracy": setup.test_accuracy},
        "references": None
        if refs is None
        else {"k": refs.k, "seconds_per_model": refs.seconds, "cached": sum(refs.cached), "cache": str(refs.cache_dir)},
        "n_inputs": int(setup.population.x_train.shape[0]),
        "n_members": int(setup.is_member.sum()),
        "assumptions": setup.assumptions,
    }


def _print(report: dict[str, Any]) -> None:
    t = report["target"]
    typer.echo(
        f"{report['mode']} mode: {report['n_inputs']} records ({report['n_members']} members); target accuracy "
        f"{t['train_accuracy']:.3f} on members, {t['test_accuracy']:.3f} on non-members"
    )
    typer.echo(f"{'attack':<18} {'AUC':>6} {'bal.acc':>8} {'TPR@0.1%FPR':>12} {'TPR@1%FPR':>10}")
    for name, r in report["attacks"].items():
        tpr = r["tpr_at_fpr"]
        typer.echo(
            f"{name:<18} {r['auc']:>6.3f} {r['balanced_accuracy']:>8.3f} {tpr['0.001']:>12.4f} {tpr['0.01']:>10.4f}"
        )
    for line in report["assumptions"]:
        typer.echo(f"note: {line}")
