"""Helpers the command-line modules share: a usage error that exits 2, progress on stderr, JSON of odd values,
the options every command that takes ``--model`` / ``--data`` has and their loading, the ``--json``-or-text
result, Ctrl-C during training, and the translation of the library's parameter names into the flags a CLI user
types."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from ..errors import UsageError
from .groups import OptionGroup

T = TypeVar("T")

__all__ = [
    "FLAGS",
    "Arch",
    "Data",
    "InputShape",
    "LabelColumn",
    "LoadOptions",
    "Model",
    "NClasses",
    "RecipeEpochs",
    "check_output_file",
    "echo_json",
    "emit",
    "fail",
    "finite",
    "flagged",
    "json_default",
    "json_help",
    "load_arch_data",
    "load_data_option",
    "load_model_and_data",
    "load_model_option",
    "log",
    "parse_numbers",
    "parse_shape",
    "progress_bar",
    "refuse",
    "resumable",
]

# library parameters and the flags that set them: a library error naming ``input_shape=`` reaches a CLI user
# as ``--input-shape``
FLAGS = {
    "input_shape": "--input-shape",
    "n_classes": "--n-classes",
    "arch": "--arch",
    "label_column": "--label-column",
    "bounds": "--bounds",
    "out": "--out",
    "probes": "--probes",
}
# ``name=`` for every parameter; a bare ``input_shape`` ("check input_shape") too where the name holds an underscore
# (no English word does)
_PARAM = re.compile(r"\b(?:(" + "|".join(FLAGS) + r")=|(" + "|".join(k for k in FLAGS if "_" in k) + r")\b)")

INPUT_SHAPE_HELP = (
    "Shape of one input, comma-separated (e.g. 1,28,28), for models that do not record it "
    "(TorchScript, http(s):// endpoints, factories)."
)
N_CLASSES_HELP = "Number of classes, for models that do not record it (http(s):// endpoints)."
LABEL_COLUMN_HELP = "With a .csv --data file: the column holding the labels (default: 'label', else the last column)."
MODEL_HELP = (
    "zoo:NAME, a .safetensors/.pt2/TorchScript/.onnx file, module:function, or an http(s):// URL "
    "(its bearer key from $BASTION_API_KEY)."
)
DATA_HELP = (
    "digits, mnist5k, breast-cancer, or a .npz/.csv file or image folder (no test split: 80/20, said on stderr)."
)
ARCH_HELP = "Architecture name for a weights-only model file."

# the options every command that loads a model and data declares alike (typer reads them from the signature)
Model = Annotated[str, typer.Option(..., "--model", "-m", help=MODEL_HELP)]
Data = Annotated[str, typer.Option(..., "--data", "-d", help=DATA_HELP)]
Arch = Annotated[str | None, typer.Option("--arch", help=ARCH_HELP)]
InputShape = Annotated[str | None, typer.Option("--input-shape", help=INPUT_SHAPE_HELP)]
NClasses = Annotated[int | None, typer.Option("--n-classes", help=N_CLASSES_HELP)]
LabelColumn = Annotated[str | None, typer.Option("--label-column", help=LABEL_COLUMN_HELP)]

# the epochs of a registered architecture's zoo recipe (`bastion train --arch`, `bastion privacy --arch`)
RecipeEpochs = Annotated[int | None, typer.Option("--epochs", help="Override the architecture recipe's epochs.")]


@dataclass(frozen=True)
class LoadOptions(OptionGroup):
    """How to read ``--model`` and ``--data`` where they do not say it themselves: ``--arch``, ``--input-shape``,
    ``--n-classes`` and ``--label-column`` (one parameter of a command wrapped by
    :func:`~bastion.cli.groups.expand_groups`)."""

    arch: Arch = None
    input_shape: InputShape = None
    n_classes: NClasses = None
    label_column: LabelColumn = None


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code`` (2: a usage error)."""
    typer.echo(f"error: {flagged(message)}", err=True)
    raise typer.Exit(code)


def refuse(message: str) -> NoReturn:
    """A usage error raised, not printed: :func:`bastion.cli.main` prints it on one line and exits with code 2."""
    raise UsageError(message)


def flagged(message: str) -> str:
    """``message`` with the library's parameter names (``input_shape=``) replaced by their CLI flags."""
    return _PARAM.sub(lambda m: FLAGS[m.group(1)] + " " if m.group(1) else FLAGS[m.group(2)], message).replace(
        "  ", " "
    )


def log(message: str) -> None:
    typer.echo(message, err=True)


def finite(v: Any) -> Any:
    """``v``, or ``None`` for a float that is not finite (JSON has no nan or infinity)."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def json_default(o: Any) -> Any:
    if isinstance(o, float) and math.isnan(o):
        return None
    return str(o)


def parse_numbers(
    text: str, option: str, convert: Callable[[str], T], what: str, *, sep: str = ",", skip_empty: bool = True
) -> list[T]:
    """The parts of ``text`` split at ``sep`` (a regular expression), each through ``convert`` (empty parts skipped
    unless not ``skip_empty``); one that does not convert is a :class:`UsageError`: ``option``: ``text`` is not a
    comma-separated list of ``what``."""
    try:
        return [convert(p) for p in re.split(sep, text) if p.strip() or not skip_empty]
    except ValueError:
        refuse(f"{option}: {text!r} is not a comma-separated list of {what}")


def parse_shape(text: str | None, option: str = "--input-shape") -> tuple[int, ...] | None:
    """``"1,28,28"`` -> ``(1, 28, 28)``; ``None`` stays ``None``."""
    if text is None:
        return None
    # "1,28,28" or "1x28x28"; an empty part is not a whole number
    shape = tuple(
        parse_numbers(text.strip(), option, int, "whole numbers (e.g. 1,28,28)", sep="[,x]", skip_empty=False)
    )
    if not shape or any(d < 1 for d in shape):
        refuse(f"{option}: every dimension must be a whole number >= 1, got {text!r}")
    return shape


def check_output_file(path: str, option: str, *, suffix: str | None = None, what: str | None = None) -> Path:
    """``path`` can be written: it ends with ``suffix`` (where one is given), its folder exists, is a folder and is
    writable, and the path is not a folder (an existing file is overwritten). Checked before the work, so a typo
    costs nothing; a :class:`UsageError` naming ``option`` otherwise (for a wrong suffix: ``what`` is written as
    ``suffix``, e.g. ``what="the copy is"``, or without ``what``: ``option`` must end with ``suffix``)."""
    if suffix is not None and not path.endswith(suffix):
        refuse(
            f"{option}: {what} written as {suffix}, got {path!r}"
            if what
            else f"{option} must end with {suffix}, got {path!r}"
        )
    p = Path(path).expanduser()
    parent = p.parent
    if p.is_dir():
        refuse(f"{option}: {path} is a folder; give a file name")
    if not parent.exists():
        refuse(f"{option}: the folder {parent} does not exist: create it first or choose another path")
    if not parent.is_dir():
        refuse(f"{option}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        refuse(f"{option}: cannot write in {parent} (permission denied)")
    if p.exists() and not os.access(p, os.W_OK):
        refuse(f"{option}: {path} exists and cannot be overwritten (permission denied)")
    return p


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


def load_model_and_data(
    model: str, data: str, load: LoadOptions, *, quiet: bool, say_split: bool = False
) -> tuple[Any, Any]:
    """The ``--model`` and the ``--data`` of a command, read as ``load`` says, in that order; what they say goes to
    stderr unless ``quiet`` (``--json``), but a split made for the data is said regardless with ``say_split``."""
    say = None if quiet else log
    clf = load_model_option(model, arch=load.arch, input_shape=load.input_shape, n_classes=load.n_classes, log=say)
    ds = load_data_option(data, label_column=load.label_column, log=log if say_split else say)
    return clf, ds


def load_arch_data(data: str, arch: str, *, label_column: str | None, say: Callable[[str], None] | None) -> Any:
    """The ``--data`` a registered architecture ``arch`` trains on: an unknown architecture is refused before the data
    loads, data of another input shape after."""
    from ..models.architectures import ARCHITECTURES

    spec = ARCHITECTURES.get(arch)
    ds = load_data_option(data, label_column=label_column, log=say)
    if tuple(ds.input_shape) != tuple(spec.input_shape):
        refuse(f"--data: {data} has inputs of shape {tuple(ds.input_shape)} but {arch} takes {spec.input_shape}")
    return ds


def json_help(keys: Iterable[str], end: str = ".") -> str:
    """The help of a ``--json`` that prints one object: "Print exactly one JSON object: " and the ``keys`` it always
    has, then ``end`` (e.g. ``" (+ metrics with training)."``)."""
    return "Print exactly one JSON object: " + ", ".join(keys) + end


def echo_json(record: Any, *, default: Callable[[Any], Any] | None = json_default, finite_values: bool = False) -> None:
    """``record`` printed as one JSON object (``--json``); ``finite_values``: a top-level value that is a float and
    not finite becomes ``null``."""
    if finite_values:
        record = {k: finite(v) for k, v in record.items()}
    typer.echo(json.dumps(record, default=default))


def emit(
    record: Any,
    as_json: bool,
    show: Callable[[Any], None],
    *,
    default: Callable[[Any], Any] | None = json_default,
    finite_values: bool = False,
) -> None:
    """A command's result: one JSON object with ``--json`` (see :func:`echo_json`), else ``show(record)``."""
    if as_json:
        echo_json(record, default=default, finite_values=finite_values)
    else:
        show(record)


@contextlib.contextmanager
def progress_bar(
    label: str, total: int, *, quiet: bool, columns: Callable[[], tuple[Any, ...]] | None = None
) -> Iterator[Callable[[int, int], None] | None]:
    """A ``progress(done, total)`` callback that moves a rich bar of ``total`` steps while inside (``columns``: makes
    its rich columns; default rich's); ``None`` when ``quiet`` (``--json``) or stderr is not a terminal."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import Progress

    with Progress(*(columns() if columns else ()), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda done, _total: bar.update(task, completed=done)


@contextlib.contextmanager
def resumable(checkpoint: str | None) -> Iterator[None]:
    """Training inside: on Ctrl-C, say how to resume (from ``checkpoint``, where there is one) and exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        typer.echo(
            "\ninterrupted" + (f": run the same command to resume from {checkpoint}" if checkpoint else ""), err=True
        )
        raise typer.Exit(130) from None
