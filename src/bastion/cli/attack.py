"""``bastion attack``: one evasion attack on a model and a dataset."""

from __future__ import annotations

import inspect
import json
import math
import sys
from typing import Any

import typer

from ..errors import UsageError
from .common import fail as _fail
from .common import json_default as _json_default
from .common import log as _log


def _clean(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _read_spec(path: str, option: str) -> dict[str, Any]:
    """A JSON (``.json``) or TOML (``.toml``) file holding one mapping."""
    import tomllib
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        _fail(f"{option}: no such file {path!r}")
    try:
        text = p.read_text(encoding="utf-8")
        if p.suffix.lower() == ".toml":
            spec = tomllib.loads(text)
        elif p.suffix.lower() == ".json":
            spec = json.loads(text)
        else:
            _fail(f"{option}: {path!r} must be a .json or .toml file")
    except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        _fail(f"{option}: {path} is not valid {p.suffix.lstrip('.').upper()}: {exc}")
    if not isinstance(spec, dict):
        _fail(f"{option}: {path} must hold one mapping, got {type(spec).__name__}")
    return spec


def attack(
    model: str = typer.Option(
        ...,
        "--model",
        "-m",
        help="zoo:NAME, a .safetensors/.pt2/TorchScript/.onnx file, module:function, or an http(s):// URL.",
    ),
    data: str = typer.Option(
        ..., "--data", "-d", help="digits, mnist5k, breast-cancer, or a .npz/.csv file or image folder."
    ),
    attack_name: str = typer.Option(
        "pgd", "--attack", "-a", help="Attack name (see `bastion attack --help` list below)."
    ),
    eps: float | None = typer.Option(
        None,
        "--eps",
        help="Perturbation budget in input space (default 0.3 for linf, 2.0 for l2, 10 for l1; none for cw/deepfool).",
    ),
    norm: str | None = typer.Option(
        None, "--norm", help="linf, l2 or l1 (l1: pgd only); default: the attack's own (linf; l2 for cw and deepfool)."
    ),
    n: int = typer.Option(1000, "--n", help="Number of test samples to attack (the first n)."),
    steps: int | None = typer.Option(None, "--steps", help="Iterations, for iterative attacks."),
    step_size: float | None = typer.Option(None, "--step-size", help="Step size, for PGD-style attacks."),
    restarts: int | None = typer.Option(None, "--restarts", help="Random restarts, where supported."),
    max_queries: int | None = typer.Option(
        None, "--max-queries", help="Query budget per input, for query-based (black-box) attacks."
    ),
    targeted: bool = typer.Option(
        False, "--targeted", help="Attack random target labels (seeded) instead of any wrong label."
    ),
    early_stop: bool = typer.Option(
        True, "--early-stop/--no-early-stop", help="Stop attacking a sample once it is misclassified."
    ),
    arch: str | None = typer.Option(None, "--arch", help="Architecture name for a weights-only model file."),
    save_patch: str | None = typer.Option(
        None,
        "--save-patch",
        help="With --attack patch: write the trained patch as a PNG (one file per target: NAME-tK.png).",
    ),
    constraints: str | None = typer.Option(
        None,
        "--constraints",
        help="With --attack tabular: a JSON or TOML file of feature constraints (immutable, integer, categorical, ranges, norm, eps; features by name or index).",
    ),
    batch_size: int = typer.Option(250, "--batch-size", help="Samples per batch."),
    seed: int = typer.Option(0, "--seed", help="Seed of the attack's random generator."),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object."),
) -> None:
    """Attack a model on a dataset and print clean/robust accuracy, success rate, median norm, queries and seconds.

    Attacks: fgsm, pgd, mifgsm, apgd-ce, apgd-dlr, apgd-t, cw, deepfool, ensemble (white-box); square,
    simba, hopskipjump, boundary, noise, transfer, tabular (query-based, --max-queries); patch.
    """
    import torch

    from ..attacks import ATTACKS, get_attack
    from ..data import load_dataset
    from ..models.loading import load_model
    from ..threat import canonical_norm

    name = attack_name.strip().lower()
    if name not in ATTACKS:
        _fail(f"--attack: unknown attack {attack_name!r}; choose one of {', '.join(sorted(ATTACKS))}")
    cls = ATTACKS[name]
    params = inspect.signature(cls.__init__).parameters
    spec: dict[str, Any] | None = None
    if constraints is not None:
        if name != "tabular":
            _fail("--constraints only applies to --attack tabular")
        spec = _read_spec(constraints, "--constraints")
        if norm is None and "norm" in spec:
            norm = str(spec["norm"])
        if eps is None and spec.get("eps") is not None:
            eps = spec["eps"]
            if isinstance(eps, bool) or not isinstance(eps, (int, float)):
                _fail(f"--constraints: eps must be a number, got {eps!r}")
            eps = float(eps)
        spec = {k: v for k, v in spec.items() if k not in ("norm", "eps")}  # the budget is the attack's, given once
    try:
        norm = canonical_norm(norm if norm is not None else params["norm"].default)
    except ValueError as exc:
        _fail(f"--norm: {exc}")
    if norm not in cls.norms:
        _fail(f"--norm: the {name} attack supports {', '.join(cls.norms)}, not {norm}")
    if eps is not None and (not math.isfinite(eps) or eps < 0):
        _fail(f"--eps must be a finite number >= 0, got {eps}")
    if n < 1:
        _fail(f"--n must be >= 1, got {n}")
    kwargs: dict[str, Any] = {"norm": norm, "batch_size": batch_size, "seed": seed}
    if eps is not None:
        kwargs["eps"] = eps
    elif not getattr(cls, "minimum_norm", False):
        kwargs["eps"] = {"linf": 0.3, "l2": 2.0, "l1": 10.0}[norm]
    for opt, key, value in (
        ("--steps", "steps", steps),
        ("--step-size", "step_size", step_size),
        ("--restarts", "restarts", restarts),
        ("--max-queries", "max_queries", max_queries),
    ):
        if value is not None:
            if key not in params:
                _fail(f"{opt} does not apply to the {name} attack")
            kwargs[key] = value
    if "early_stop" in params:
        kwargs["early_stop"] = early_stop
    kwargs = {k: v for k, v in kwargs.items() if k in params}
    if save_patch is not None and name != "patch":
        _fail("--save-patch only applies to --attack patch")
    if save_patch is not None and not save_patch.lower().endswith(".png"):
        _fail(f"--save-patch must name a .png file, got {save_patch!r}")
    atk = get_attack(name, **kwargs)

    clf = load_model(model, arch=arch, log=None if as_json else _log)
    ds = load_dataset(data)
    x, y = ds.x_test[:n], ds.y_test[:n]
    if tuple(x.shape[1:]) != tuple(clf.input_shape):
        _fail(f"--data: {data} has inputs of shape {tuple(x.shape[1:])} but the model expects {tuple(clf.input_shape)}")
    snapped = 0
    if spec is not None:
        from ..attacks.evasion.constraints import FeatureConstraints

        try:
            cons = FeatureConstraints.from_dict(spec, math.prod(clf.input_shape), ds.feature_names)
            feasible = cons.snap(x, bounds=clf.bounds)
        except UsageError as exc:
            _fail(f"--constraints {constraints}: {exc}")
        snapped = int((feasible != x).flatten(1).any(dim=1).sum())
        if snapped and not as_json:
            _log(
                f"{snapped} of {x.shape[0]} records were off their integer grid, categories or ranges: "
                "snapped onto the constraints before the attack"
            )
        x = feasible
        atk = get_attack(name, **kwargs, constraints=cons)
    targets = None
    if targeted:
        g = torch.Generator().manual_seed(seed)
        shift = torch.randint(1, clf.n_classes, y.shape, generator=g)
        targets = (y + shift) % clf.n_classes

    show_bar = not as_json and sys.stderr.isatty()
    if show_bar:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task(f"{name} on {n} samples", total=x.shape[0])
            result = atk(clf, x, y, targets, progress=lambda done, total: bar.update(task, completed=done))
    else:
        result = atk(clf, x, y, targets)
    summary = {k: _clean(v) for k, v in result.summary().items()}
    if spec is not None:
        summary["snapped_records"] = snapped
    if save_patch is not None:
        from pathlib import Path

        from ..attacks.evasion.patch import save_png

        for t, patch in result.extra.get("patches", {}).items():
            path = Path(save_patch) if t is None else Path(save_patch).with_name(f"{Path(save_patch).stem}-t{t}.png")
            save_png(patch, path, bounds=clf.bounds)
            if not as_json:
                _log(f"patch written to {path}")
    if as_json:
        typer.echo(json.dumps(summary, default=_json_default))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{atk!r}", title_justify="left")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("model", model)
    t.add_row("data", f"{data} (first {x.shape[0]} test samples)")
    t.add_row(
        "threat",
        f"{result.threat.norm}, eps={result.threat.eps}, bounds={result.threat.bounds}"
        + (", targeted" if targeted else ""),
    )
    t.add_row("clean accuracy", f"{result.clean_accuracy:.4f}")
    t.add_row("robust accuracy", f"{result.robust_accuracy:.4f}")
    t.add_row("attack success rate", f"{result.success_rate:.4f}")
    med = result.median_perturbation
    t.add_row(f"median perturbation ({result.threat.norm})", "n/a" if math.isnan(med) else f"{med:.4f}")
    t.add_row("model queries", f"{result.queries}")
    t.add_row("gradient passes", f"{result.gradients}")
    t.add_row("seconds", f"{result.seconds:.2f}")
    Console().print(t)
