"""Helpers the command-line modules share: a usage error that exits 2, progress on stderr, JSON of odd values."""

from __future__ import annotations

import math
from typing import Any, NoReturn

import typer

from ..errors import UsageError

__all__ = ["fail", "json_default", "log", "refuse"]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code`` (2: a usage error)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def refuse(message: str) -> NoReturn:
    """A usage error raised, not printed: :func:`bastion.cli.main` prints it on one line and exits with code 2."""
    raise UsageError(message)


def log(message: str) -> None:
    typer.echo(message, err=True)


def json_default(o: Any) -> Any:
    if isinstance(o, float) and math.isnan(o):
        return None
    return str(o)
