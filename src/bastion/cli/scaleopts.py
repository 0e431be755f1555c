"""``--workers N`` and ``--ray ADDRESS``: the options every command that shards its work takes (``audit``,
``attack``, ``certify``, ``privacy``), and the executor they ask for. Without them Ray is never imported."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated, Any

import typer

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


@contextlib.contextmanager
def executor_for(workers: int | None, address: str | None, *, quiet: bool) -> Iterator[Any]:
    """The executor of ``--workers`` / ``--ray`` (this process when neither is given), closed on the way out: an
    embedded Ray stops with the command, a cluster keeps running."""
    from ..scale import make_executor

    ex = make_executor(workers, address)
    if ex.backend != "serial" and not quiet:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        typer.echo(f"running shards on {where} with {ex.workers} worker(s)", err=True)
    try:
        yield ex
    finally:
        ex.close()
