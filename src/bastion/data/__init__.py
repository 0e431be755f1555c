"""Datasets: built-in ones that ship in packages, and loaders for the user's files."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from .builtin import DATASETS, load_builtin
from .dataset import Dataset

__all__ = ["DATASETS", "Dataset", "load_dataset"]


def load_dataset(spec: str | Path, **kwargs: object) -> Dataset:
    """Load a dataset: a built-in name ('digits', 'mnist5k', 'breast-cancer'), a ``.npz`` file with
    ``x`` and ``y`` arrays, a ``.csv`` file with a label column, or a folder of images per class.

    File loaders accept keyword options (see :mod:`bastion.data.files`).
    """
    s = str(spec)
    if s in DATASETS:
        if kwargs:
            raise UsageError(f"built-in dataset {s!r} takes no options, got {sorted(kwargs)}")
        return load_builtin(s)
    path = Path(s)
    if not path.exists():
        raise UsageError(
            f"dataset {s!r} is neither a built-in name ({', '.join(DATASETS)}) nor an existing file or folder"
        )
    from . import files

    return files.load_path(path, **kwargs)
