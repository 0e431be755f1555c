"""``bastion steal``: extract a copy of a model by querying it, measure how faithful the copy is, save it.

The victim is only queried (``--model`` is anything the other commands load: zoo:NAME, a file, an http(s):// URL);
``--data`` is its task: the test split measures the copy (fidelity to the victim and accuracy) and the training
split is the attacker's pool of natural inputs, unless ``--surrogate-data`` gives another one. Every option is
checked and the attack built before a model is loaded or a query sent. The work is the library's
(:mod:`bastion.attacks.extraction`).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .common import (
    Data,
    LoadOptions,
    Model,
    check_output_file,
    echo_json,
    json_help,
    load_data_option,
    load_model_and_data,
    parse_numbers,
    refuse,
)
from .common import log as _log
from .groups import expand_groups

JSON_KEYS = ("attack", "budget", "queries", "fidelity", "accuracy", "victim_accuracy", "seconds", "curve", "out")
"""Always in ``--json`` (also ``copy_arch`` and the attack's ``extra``)."""

AttackName = Annotated[
    str,
    typer.Option(
        ...,
        "--attack",
        "-a",
        help="equation-solving (logistic victims with probabilities), knockoff, knockoff-adaptive, jacobian.",
    ),
]
Budget = Annotated[int, typer.Option(..., "--budget", "-b", help="The most inputs sent to the victim.")]
Out = Annotated[str, typer.Option(..., "--out", "-o", help="The stolen copy (.safetensors, loadable with --model).")]
LabelsOnly = Annotated[
    bool, typer.Option("--labels-only", help="knockoff: train on the victim's labels only, not its probabilities.")
]
Surrogate = Annotated[
    str | None,
    typer.Option(
        "--surrogate-data", help="The attacker's pool: another dataset of the victim's input shape (default: --data)."
    ),
]
CopyArch = Annotated[
    str | None,
    typer.Option("--copy-arch", help="The copy's registered architecture (default: the zoo's for --data)."),
]
Checkpoints = Annotated[
    str | None,
    typer.Option("--checkpoints", help="knockoff: query counts to measure the copy at, e.g. 250,500,1000."),
]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the attack (query choice, copy initialisation).")]
AsJson = Annotated[bool, typer.Option("--json", help=json_help(JSON_KEYS))]


def _checkpoints(text: str | None, budget: int) -> list[int] | None:
    if text is None:
        return None
    points = parse_numbers(text, "--checkpoints", int, "whole numbers (e.g. 250,500)")
    if not points or any(p < 1 or p > budget for p in points) or points != sorted(set(points)):
        refuse(f"--checkpoints must be increasing whole numbers in [1, --budget {budget}], got {text!r}")
    return points


def _copy_arch(attack: str, model: Any, data: Any, copy_arch: str | None) -> str:
    """The registered architecture the copy is built as (and saved under)."""
    from ..attacks.extraction import default_copy_arch, logistic_arch
    from ..models.architectures import ARCHITECTURES

    if attack == "equation-solving":
        arch = logistic_arch(tuple(model.input_shape), model.n_classes)
        if copy_arch is not None:
            refuse("--copy-arch: equation solving's copy is the logistic model it solves for; drop --copy-arch")
        if arch is None:
            refuse(
                f"equation-solving saves its copy as a registered logistic architecture and none takes "
                f"{tuple(model.input_shape)} -> {model.n_classes} classes (the built-in ones: cancer-logreg, "
                "digits-logreg): register one, or use knockoff"
            )
        return arch
    arch = copy_arch or default_copy_arch(model, data.name, own=False)
    if arch is None:
        refuse(
            f"no zoo architecture for the model's inputs is known for --data {data.name!r}: pass --copy-arch "
            "(a registered architecture)"
        )
    ARCHITECTURES.get(arch)
    return arch


def _pool(model: Any, data: Any, surrogate: str | None, label_column: str | None, say: Any) -> tuple[Any, Any]:
    """The attacker's pool (inputs, and their own labels when it is another dataset)."""
    if surrogate is None:
        return data.x_train, None
    pool = load_data_option(surrogate, label_column=label_column, log=say)
    if tuple(pool.input_shape) != tuple(model.input_shape):
        refuse(
            f"--surrogate-data {surrogate!r} has inputs of shape {tuple(pool.input_shape)} but the model takes "
            f"{tuple(model.input_shape)}: the pool must be inputs the victim accepts"
        )
    return pool.x_train, pool.y_train


def _attack_kwargs(attack: str, arch: str, pool: Any, pool_labels: Any, labels_only: bool, seed: int) -> dict[str, Any]:
    if labels_only and attack != "knockoff" and attack != "knockoff-adaptive":
        works = "jacobian uses labels only already" if attack == "jacobian" else "it needs the victim's probabilities"
        refuse(f"--labels-only is a knockoff option ({attack}: {works}); use --attack knockoff --labels-only")
    if attack == "equation-solving":
        return {"seed": seed}
    if attack == "jacobian":
        return {"seed_set": pool, "copy": arch, "seed": seed}
    kwargs = {"pool": pool, "copy": arch, "labels_only": labels_only, "seed": seed}
    if attack == "knockoff-adaptive" and pool_labels is not None:
        kwargs["pool_labels"] = pool_labels
    return kwargs


@expand_groups
def steal(
    model: Model,
    data: Data,
    attack: AttackName,
    budget: Budget,
    out: Out,
    labels_only: LabelsOnly = False,
    surrogate_data: Surrogate = None,
    copy_arch: CopyArch = None,
    checkpoints: Checkpoints = None,
    seed: Seed = 0,
    load: LoadOptions = LoadOptions(),
    as_json: AsJson = False,
) -> None:
    """Steal a copy of a model by querying it (equation solving, Knockoff Nets, Jacobian augmentation); report the
    copy's fidelity to the victim and its accuracy on the test split, and save it as safetensors."""
    from ..attacks.extraction import EXTRACTION_ATTACKS
    from ..models.saving import save_model

    check_output_file(out, "--out", suffix=".safetensors", what="the copy is")
    if budget < 1:
        refuse(f"--budget must be >= 1, got {budget}")
    cls = EXTRACTION_ATTACKS.get(attack)
    attack = cls.name
    points = _checkpoints(checkpoints, budget)
    say = None if as_json else _log
    victim, ds = load_model_and_data(model, data, load, quiet=as_json)
    if tuple(ds.input_shape) != tuple(victim.input_shape):
        refuse(f"--data {data!r} has inputs of shape {tuple(ds.input_shape)} but the model takes {victim.input_shape}")
    copy = _copy_arch(attack, victim, ds, copy_arch)
    pool, pool_labels = _pool(victim, ds, surrogate_data, load.label_column, say)
    atk = cls(**_attack_kwargs(attack, copy, pool, pool_labels, labels_only, seed))
    atk.check(victim, budget, points)
    if say is not None:
        say(f"stealing {model} with {atk!r}, budget {budget}")
    result = atk.extract(victim, budget, eval_x=ds.x_test, eval_y=ds.y_test, checkpoints=points)
    save_model(result.stolen, out, arch=copy, metadata={"bastion_steal": {"attack": attack, "victim": model}})
    extra = {k: v for k, v in result.extra.items() if k != "victim_accuracy"}
    summary = {
        "attack": attack,
        "budget": budget,
        **result.summary(),
        "victim_accuracy": result.extra.get("victim_accuracy"),
        "out": out,
        "copy_arch": copy,
        "extra": extra,
    }
    if as_json:
        echo_json(summary, default=None, finite_values=True)
        return
    typer.echo(
        f"{attack}: copy of {model} saved to {out} ({copy}) after {result.queries} queries in {result.seconds:.1f} s"
    )
    typer.echo(
        f"  fidelity {result.fidelity:.4f}  accuracy {result.accuracy:.4f}  victim {summary['victim_accuracy']:.4f}"
    )
    for p in result.curve[:-1]:
        typer.echo(f"  at {p.queries:>6} queries: fidelity {p.fidelity:.4f}  accuracy {p.accuracy:.4f}")
