"""``--workers N`` and ``--ray ADDRESS``: the options every command that shards its work takes (``audit``,
``attack``, ``certify``, ``privacy``) as one option group, and the executor they ask for. Without them Ray is never
imported."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from .groups import OptionGroup

Workers = Annotated[
    int | None,
    typer.Option(
        "--workers",
        help="Run the shards on Ray with N workers: an embedded local Ray of N CPUs for this run, or at most N tasks "
        "at once on the cluster given by --ray. Same numbers as without it (the ray extra).",
    ),
]
RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray",
        help="HOST:PORT of an existing Ray cluster (what `ray start --head` prints) to run the shards on.",
    ),
]


@dataclass(frozen=True)
class ScaleOptions(OptionGroup):
    """``--workers`` and ``--ray`` (one parameter of a command wrapped by :func:`~bastion.cli.groups.expand_groups`)."""

    workers: Workers = None
    ray: RayAddress = None

    @property
    def given(self) -> bool:
        """Whether either option was given (the work is to run on Ray)."""
        return self.workers is not None or self.ray is not None


@contextlib.contextmanager
def executor_for(scale: ScaleOptions, *, quiet: bool) -> Iterator[Any]:
    """The executor of ``--workers`` / ``--ray`` (this process when neither is given), closed on the way out: an
    embedded Ray stops with the command, a cluster keeps running."""
    from ..scale import make_executor

    address = scale.ray
    ex = make_executor(scale.workers, address)
    if ex.backend != "serial" and not quiet:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        typer.echo(f"running shards on {where} with {ex.workers} worker(s)", err=True)
    try:
        yield ex
    finally:
        ex.close()
