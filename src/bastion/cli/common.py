"""Helpers the command-line modules share: a usage error that exits 2, progress on stderr, JSON of odd values,
the options every command that takes ``--model`` / ``--data`` has, and the translation of the library's
parameter names into the flags a CLI user types."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, NoReturn

import typer

from ..errors import UsageError

__all__ = [
    "FLAGS",
    "fail",
    "flagged",
    "json_default",
    "load_data_option",
    "load_model_option",
    "log",
    "parse_shape",
    "refuse",
]

# library parameters and the flags that set them: a library error naming ``input_shape=`` reaches a CLI user
# as ``--input-shape``
FLAGS = {
    "input_shape": "--input-shape",
    "n_classes": "--n-classes",
    "arch": "--arch",
    "label_column": "--label-column",
    "bounds": "--bounds",
}
_PARAM = re.compile(r"\b(" + "|".join(FLAGS) + r")=")

INPUT_SHAPE_HELP = (
    "Shape of one input, comma-separated (e.g. 1,28,28), for models that do not record it "
    "(TorchScript, http(s):// endpoints, factories)."
)
N_CLASSES_HELP = "Number of classes, for models that do not record it (http(s):// endpoints)."
LABEL_COLUMN_HELP = "With a .csv --data file: the column holding the labels (default: 'label', else the last column)."


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code`` (2: a usage error)."""
    typer.echo(f"error: {flagged(message)}", err=True)
    raise typer.Exit(code)


def refuse(message: str) -> NoReturn:
    """A usage error raised, not printed: :func:`bastion.cli.main` prints it on one line and exits with code 2."""
    raise UsageError(message)


def flagged(message: str) -> str:
    """``message`` with the library's parameter names (``input_shape=``) replaced by their CLI flags."""
    return _PARAM.sub(lambda m: FLAGS[m.group(1)] + " ", message).replace("  ", " ")


def log(message: str) -> None:
    typer.echo(message, err=True)


def json_default(o: Any) -> Any:
    if isinstance(o, float) and math.isnan(o):
        return None
    return str(o)


def parse_shape(text: str | None, option: str = "--input-shape") -> tuple[int, ...] | None:
    """``"1,28,28"`` -> ``(1, 28, 28)``; ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        refuse(f"{option}: {text!r} is not a comma-separated list of whole numbers (e.g. 1,28,28)")
    if not shape or any(d < 1 for d in shape):
        refuse(f"{option}: every dimension must be a whole number >= 1, got {text!r}")
    return shape


def load_model_option(
    spec: str,
    *,
    arch: str | None = None,
    input_shape: str | None = None,
    n_classes: int | None = None,
    log: Callable[[str], None] | None = None,
) -> Any:
    """The model named by ``--model``: a :class:`UsageError` where the user can fix it; any other failure to read
    a file becomes one too, naming the file (a model that does not load is the user's input, not a bug)."""
    from ..models.loading import load_model

    if n_classes is not None and n_classes < 2:
        refuse(f"--n-classes must be >= 2, got {n_classes}")
    try:
        return load_model(spec, arch=arch, input_shape=parse_shape(input_shape), n_classes=n_classes, log=log)
    except UsageError:
        raise
    except (OSError, RuntimeError, ValueError) as exc:
        refuse(f"--model: cannot load {spec!r}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def load_data_option(spec: str, *, label_column: str | None = None, log: Callable[[str], None] | None = None) -> Any:
    """The dataset named by ``--data``; says on stderr (through ``log``) when a file without a test split was
    split for it."""
    from ..data import load_dataset

    kwargs: dict[str, Any] = {"label_column": label_column} if label_column is not None else {}
    try:
        ds = load_dataset(spec, **kwargs)
    except UsageError:
        raise
    except (OSError, ValueError) as exc:
        refuse(f"--data: cannot load {spec!r}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    split = ds.meta.get("split")
    if log is not None and split:
        log(f"{spec}: {split}")
    return ds
