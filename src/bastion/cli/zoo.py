"""``bastion zoo``: the built-in models and datasets."""

from __future__ import annotations

import json

import typer


def zoo(as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object.")) -> None:
    """List the built-in models and datasets (nothing is downloaded: models train on first use)."""
    from ..data import DATASETS
    from ..models.zoo import ZOO

    models = {k: {"dataset": e.dataset, "kind": e.kind, "description": e.description} for k, e in ZOO.items()}
    datasets = {k: v[1] for k, v in DATASETS.items()}
    if as_json:
        typer.echo(json.dumps({"models": models, "datasets": datasets}))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title="models (use as --model zoo:NAME)", title_justify="left")
    for col in ("name", "dataset", "kind", "description"):
        t.add_column(col)
    for k, m in models.items():
        t.add_row(k, m["dataset"], m["kind"], m["description"])
    d = Table(title="datasets (use as --data NAME)", title_justify="left")
    d.add_column("name")
    d.add_column("description")
    for k, v in datasets.items():
        d.add_row(k, v)
    c = Console()
    c.print(t)
    c.print(d)
