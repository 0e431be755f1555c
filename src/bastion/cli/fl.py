"""``bastion fl simulate`` and ``bastion fl matrix``: federated learning under attack, in Flower's simulation
engine (:mod:`bastion.federated`; the ``federated`` extra)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import check_output_file, echo_json, emit, json_default, log, refuse
from .groups import OptionGroup, expand_groups

SIMULATE_KEYS = ("final_accuracy", "clean_run_accuracy", "backdoor_asr", "rounds", "spec", "seconds")

ArchOpt = Annotated[str, typer.Option("--arch", help="Registered architecture every client trains.")]
DataOpt = Annotated[str, typer.Option("--data", "-d", help="Dataset: a built-in name or a file every client reads.")]
Clients = Annotated[int, typer.Option("--clients", help="Number of clients (all train in every round).")]
Malicious = Annotated[float, typer.Option("--malicious", help="Share of malicious clients, in [0, 0.5).")]
Rounds = Annotated[int, typer.Option("--rounds", help="Federated rounds.")]
Alpha = Annotated[
    float | None, typer.Option("--alpha", help="Dirichlet(alpha) label split (0.5: non-IID); omit for IID.")
]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the split, the initial model, training and attacks.")]
Boost = Annotated[
    float | None,
    typer.Option(
        "--boost",
        help="sign-flip: the multiple of the negated honest mean (default 4); backdoor: the "
        "model-replacement scale (default clients / malicious).",
    ),
]
Params = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        help="An attack option KEY=VALUE (repeatable). backdoor: target, fraction, size, location, start, lr, epochs.",
    ),
]
AggParams = Annotated[
    list[str] | None, typer.Option("--agg-param", help="An aggregator option KEY=VALUE (repeatable).")
]
LocalEpochs = Annotated[int | None, typer.Option("--local-epochs", help="Client epochs per round (default: recipe).")]
Lr = Annotated[float | None, typer.Option("--lr", help="Client SGD learning rate (default: the recipe's).")]
Workers = Annotated[int | None, typer.Option("--workers", help="CPUs the simulation may use (default: all).")]
RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray",
        help="HOST:PORT of a Ray cluster (`ray start --head`): the clients run there as Flower's actors, with the "
        "local numbers (the ray extra on every node).",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object: " + ", ".join(SIMULATE_KEYS))]


@dataclass(frozen=True)
class Federation(OptionGroup):
    """The federated setting both commands take: architecture, data, clients, rounds, split, seed, client training."""

    arch: ArchOpt = "mnist-cnn"
    data: DataOpt = "mnist5k"
    clients: Clients = 20
    malicious: Malicious = 0.2
    rounds: Rounds = 10
    alpha: Alpha = None
    seed: Seed = 0
    local_epochs: LocalEpochs = None
    lr: Lr = None

    def base(self) -> Any:
        """The attack-free run of these settings: the architecture's client recipe with the flags' overrides."""
        from ..federated.spec import FL_RECIPES, FLSpec, LocalRecipe

        recipe = FL_RECIPES.get(self.arch, LocalRecipe())
        if self.local_epochs is not None or self.lr is not None:
            recipe = LocalRecipe(
                self.local_epochs or recipe.epochs, recipe.batch_size, self.lr or recipe.lr, recipe.momentum
            )
        return FLSpec(arch=self.arch, data=self.data, clients=self.clients, malicious=self.malicious,
                      rounds=self.rounds, alpha=self.alpha, seed=self.seed, local=recipe)  # fmt: skip


def _params(items: list[str] | None, option: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            refuse(f"{option} takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _simulate_module() -> Any:
    try:
        import flwr  # noqa: F401
    except ImportError:
        refuse("bastion fl needs Flower: pip install 'bastion[federated]'")
    from ..federated import simulate

    return simulate


def _attacked(base: Any, attack: str, aggregator: str, params: dict[str, Any], boost: float | None = None) -> Any:
    """``base`` with an attack (its options, ``--boost`` where it applies) and an aggregator."""
    if boost is not None:
        if attack not in ("sign-flip", "backdoor"):
            refuse(f"--boost applies to sign-flip and backdoor, not {attack}")
        params = {**params, "boost": boost}
    return base.replace(attack=attack, aggregator=aggregator, attack_params=params if attack != "none" else {})


def _progress(result: dict[str, Any]) -> None:
    s = result["spec"]
    extra = f", backdoor ASR {result['backdoor_asr']:.3f}" if "backdoor_asr" in result else ""
    log(
        f"  {s['attack']:>12} x {s['aggregator']:<13} accuracy {result['final_accuracy']:.4f}{extra} ({result['seconds']:.0f} s)"
    )


@expand_groups
def fl_simulate(
    fed: Federation = Federation(),
    attack: Annotated[
        str,
        typer.Option("--attack", help="none, label-flip, backdoor, sign-flip, gaussian, alie, ipm, min-max, min-sum."),
    ] = "none",
    aggregator: Annotated[
        str,
        typer.Option(
            "--aggregator", help="fedavg, krum, multi-krum, bulyan, median, trimmed-mean, fltrust, norm-clip."
        ),
    ] = "fedavg",
    boost: Boost = None,
    param: Params = None,
    agg_param: AggParams = None,
    baseline: Annotated[
        bool, typer.Option("--baseline", help="Also run the aggregator attack-free (clean_run_accuracy).")
    ] = False,
    workers: Workers = None,
    ray: RayAddress = None,
    deploy: Annotated[
        bool,
        typer.Option(
            "--deploy",
            help="Run on a real Flower deployment on loopback (flower-superlink + one flower-supernode per client) "
            "instead of the simulation engine.",
        ),
    ] = False,
    out: Annotated[str | None, typer.Option("--out", help="Write the result as JSON to this file.")] = None,
    as_json: AsJson = False,
) -> None:
    """One federated run on Flower's simulation engine: malicious clients attack, the aggregator defends."""
    simulate = _simulate_module()
    out_path = check_output_file(out, "--out") if out else None
    base = fed.base().replace(aggregator_params=_params(agg_param, "--agg-param"))
    specs = [_attacked(base, attack, aggregator, _params(param, "--param"), boost)]
    if baseline and attack != "none":
        specs.append(_attacked(base, "none", aggregator, {}))
    log(
        f"federated run: {fed.clients} clients ({specs[0].n_malicious} malicious), {fed.rounds} rounds, "
        f"{'IID' if fed.alpha is None else f'Dirichlet({fed.alpha})'} split of {fed.data}, {fed.arch}"
    )
    if deploy:
        from ..federated.deploy import run_deployed

        if ray is not None or workers is not None:
            refuse("--deploy runs its own superlink and supernodes: drop --ray / --workers")

        results = run_deployed(specs)
        for r in results:
            _progress(r)
    else:
        results = simulate.simulate(specs, workers=workers, address=ray, on_result=_progress)
    report = dict(results[0])
    if len(results) > 1:
        report["clean_run_accuracy"] = results[1]["final_accuracy"]
    if out_path is not None:
        out_path.write_text(json.dumps(report, indent=2, default=json_default))
    emit(report, as_json, _summary)


def _summary(report: dict[str, Any]) -> None:
    typer.echo(f"final accuracy {report['final_accuracy']:.4f}")
    if "clean_run_accuracy" in report:
        typer.echo(
            f"attack-free run {report['clean_run_accuracy']:.4f} "
            f"(drop {report['clean_run_accuracy'] - report['final_accuracy']:+.4f})"
        )
    if "backdoor_asr" in report:
        typer.echo(f"backdoor attack success rate {report['backdoor_asr']:.4f}")


def _names(text: str, option: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        refuse(f"{option} takes a comma-separated list of names")
    return names


@expand_groups
def fl_matrix(
    attacks: Annotated[
        str, typer.Option("--attacks", help="Comma-separated attacks (each aggregator's attack-free run is added).")
    ],
    aggregators: Annotated[str, typer.Option("--aggregators", help="Comma-separated aggregators.")],
    out: Annotated[str, typer.Option("--out", help="Folder for the report (index.html, matrix.json).")],
    fed: Federation = Federation(),
    workers: Workers = None,
    ray: RayAddress = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the matrix table as one JSON object.")] = False,
) -> None:
    """Every attack against every aggregator (plus attack-free runs), one Flower simulation; an HTML/JSON report."""
    simulate = _simulate_module()
    from ..federated.report import matrix_table, write_matrix_report

    out_dir = Path(out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        refuse(f"--out: {out} is a file; give a folder")
    check_output_file(str(out_dir / "matrix.json") if out_dir.exists() else str(out_dir), "--out")
    base = fed.base()
    attack_list = ["none"] + [a for a in _names(attacks, "--attacks") if a != "none"]
    specs = [_attacked(base, a, g, {}) for a in attack_list for g in _names(aggregators, "--aggregators")]
    log(f"federated matrix: {len(specs)} runs ({len(attack_list) - 1} attacks + attack-free, x aggregators)")
    results = simulate.simulate(specs, workers=workers, address=ray, on_result=_progress)
    paths = write_matrix_report(results, out_dir)
    if as_json:
        echo_json(matrix_table(results))
    else:
        typer.echo(f"report: {paths['html']}")
