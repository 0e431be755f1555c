"""Load the user's own data: ``.npz`` arrays, ``.csv`` tables and folders of images per class.

Options (keyword arguments of :func:`load_path`, ``--data-option key=value`` in the CLI):

- all formats: ``test_fraction`` (0.2) and ``seed`` of the stratified split made when the file has
  no test split of its own; that split is recorded in ``meta["split"]`` (the CLI prints it).
- ``.npz``: arrays ``x``, ``y`` and optionally ``x_test``, ``y_test`` and ``bounds`` (low, high) (never
  unpickled); without ``bounds`` they are [0, 1] when every value lies in it, else the data's (min, max).
- ``.csv``: ``label_column`` (default ``label``, else the last column); ``scale=True`` maps each
  feature into [0, 1] with the training split's min/max (stored in ``meta``); unscaled features
  keep their values and the bounds are the data's (min, max).
- image folder: one subfolder per class (sorted names = class order, ``meta["classes"]``), or
  ``train/`` and ``test/`` folders laid out that way; ``grayscale`` (None = detect), ``size=(H, W)``.

Labels must be integers 0..K-1; string labels are mapped to indices in sorted order and the names
kept in ``meta["classes"]``. NaN or infinite values are an error naming the file.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UsageError
from .builtin import SPLIT_SEED
from .dataset import Dataset, stratified_split

__all__ = ["load_path"]

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
_OPTIONS = {
    ".npz": {"test_fraction", "seed"},
    ".csv": {"test_fraction", "seed", "label_column", "scale"},
    "folder": {"test_fraction", "seed", "grayscale", "size"},
}


def _labels(values: np.ndarray, path: Path) -> tuple[np.ndarray, list[str] | None]:
    """Integer labels 0..K-1, mapping non-numeric labels to indices (returned as class names)."""
    if values.dtype.kind in "US" or values.dtype == object:
        strs = values.astype(str)
        try:
            as_float = strs.astype(np.float64)
        except ValueError:
            names = sorted(set(strs.tolist()))
            return np.searchsorted(np.array(names), strs).astype(np.int64), names
        values = as_float
    if values.dtype.kind == "f":
        if not np.isfinite(values).all():
            raise UsageError(f"{path}: the labels contain NaN or infinite values")
        if not np.array_equal(values, np.round(values)):
            raise UsageError(
                f"{path}: labels must be integer class indices, got non-integer values such as "
                f"{values[values != np.round(values)][0]:g}"
            )
    elif values.dtype.kind not in "iub":
        raise UsageError(f"{path}: labels must be integers, got dtype {values.dtype}")
    y = values.astype(np.int64)
    if y.size and y.min() < 0:
        raise UsageError(
            f"{path}: labels must be integers 0..K-1, got {int(y.min())}: re-encode them "
            "(or store them as strings to have them mapped)"
        )
    return y, None


def _check_finite(x: np.ndarray, path: Path, what: str = "the features") -> None:
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise UsageError(f"{path}: {what} contain NaN or infinite values (first at index {tuple(int(i) for i in bad)})")


def _split(
    x: np.ndarray,
    y: np.ndarray,
    path: Path,
    options: dict[str, object],
    meta: dict[str, object],
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
) -> tuple[torch.Tensor, ...]:
    """The file's own train/test split, or a seeded stratified one — then recorded in ``meta["split"]`` (the
    CLI shows it: a split the user did not ask for is said, not silent)."""
    xt, yt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(y)
    if x_test is not None and y_test is not None:
        return xt, yt, torch.from_numpy(np.ascontiguousarray(x_test, dtype=np.float32)), torch.from_numpy(y_test)
    frac = float(options.get("test_fraction", 0.2))  # type: ignore[arg-type]
    if not 0.0 < frac < 1.0:
        raise UsageError(f"test_fraction must lie in (0, 1), got {frac}")
    n_test = round(frac * len(y))
    if n_test < 1 or n_test >= len(y):
        raise UsageError(f"{path}: {len(y)} samples are too few for a test_fraction of {frac}")
    seed = int(options.get("seed", SPLIT_SEED))  # type: ignore[call-overload]
    tr, te = stratified_split(yt, n_test, seed)
    meta["split"] = (
        f"no test split in the file: split {len(y)} samples into {len(tr)} train / {len(te)} test "
        f"(stratified, test_fraction={frac:g}, seed={seed})"
    )
    return xt[tr], yt[tr], xt[te], yt[te]


def _bounds(*arrays: np.ndarray) -> tuple[float, float]:
    lo = float(min(a.min() for a in arrays if a.size))
    hi = float(max(a.max() for a in arrays if a.size))
    if 0.0 <= lo and hi <= 1.0:
        return (0.0, 1.0)
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _npz(path: Path, options: dict[str, object]) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except ValueError as exc:
        raise UsageError(
            f"{path}: cannot read the arrays without unpickling ({exc}): save plain numeric arrays"
        ) from None
    except Exception as exc:
        raise UsageError(f"{path} is not a readable .npz file: {exc}") from None
    if "x" not in arrays or "y" not in arrays:
        raise UsageError(f"{path} must hold arrays named 'x' and 'y' (found: {', '.join(sorted(arrays)) or 'none'})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise UsageError(f"{path}: give both 'x_test' and 'y_test', or neither")
    parts = [("x", "y")] + ([("x_test", "y_test")] if "x_test" in arrays else [])
    xs, ys, names = [], [], None
    for kx, ky in parts:
        x, y = arrays[kx], arrays[ky]
        if x.dtype.kind not in "fiub":
            raise UsageError(f"{path}: array '{kx}' must be numeric, got dtype {x.dtype}")
        x = x.astype(np.float32)
        _check_finite(x, path, f"array '{kx}'")
        if y.ndim != 1 or len(y) != len(x):
            raise UsageError(f"{path}: '{ky}' has shape {y.shape}, expected ({len(x)},) to match '{kx}'")
        xs.append(x)
        ys.append(y)
    if len(xs) == 2 and xs[0].shape[1:] != xs[1].shape[1:]:
        raise UsageError(f"{path}: 'x' has inputs of shape {xs[0].shape[1:]} but 'x_test' has {xs[1].shape[1:]}")
    y_all, names = _labels(np.concatenate(ys), path)
    y_parts = np.split(y_all, [len(ys[0])])
    test = (xs[1], y_parts[1]) if len(xs) == 2 else (None, None)
    meta: dict[str, object] = {"source": str(path)}
    x_tr, y_tr, x_te, y_te = _split(xs[0], y_parts[0], path, options, meta, *test)
    if names:
        meta["classes"] = names
    n_classes = len(names) if names else int(y_all.max()) + 1
    bounds = _given_bounds(arrays["bounds"], xs, path) if "bounds" in arrays else _bounds(*xs)
    return Dataset(str(path), x_tr, y_tr, x_te, y_te, bounds, n_classes, meta=meta)


def _given_bounds(b: np.ndarray, xs: list[np.ndarray], path: Path) -> tuple[float, float]:
    """The file's own ``bounds`` array: two finite numbers low < high that every input respects."""
    if b.shape != (2,) or b.dtype.kind not in "fiu" or not np.isfinite(b).all() or not b[0] < b[1]:
        raise UsageError(f"{path}: 'bounds' must be two finite numbers [low, high] with low < high, got {b.tolist()}")
    lo, hi = float(b[0]), float(b[1])
    if any(a.size and (a.min() < lo or a.max() > hi) for a in xs):
        raise UsageError(f"{path}: some inputs lie outside the file's bounds [{lo:g}, {hi:g}]")
    return (lo, hi)


def _csv(path: Path, options: dict[str, object]) -> Dataset:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if len(rows) < 3:
        raise UsageError(f"{path} needs a header row and at least two data rows")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    if any(len(r) != len(header) for r in body):
        i = next(i for i, r in enumerate(body) if len(r) != len(header))
        raise UsageError(f"{path}: row {i + 2} has {len(body[i])} fields but the header has {len(header)}")
    wanted = options.get("label_column")
    if wanted is not None and wanted not in header:
        raise UsageError(f"{path} has no column {wanted!r} (columns: {', '.join(header)})")
    label = str(wanted) if wanted is not None else ("label" if "label" in header else header[-1])
    li = header.index(label)
    features = [h for i, h in enumerate(header) if i != li]
    if not features:
        raise UsageError(f"{path} has no feature columns besides the label column {label!r}")
    table = np.array(body, dtype=object)
    cols = []
    for i, name in ((i, h) for i, h in enumerate(header) if i != li):
        try:
            cols.append(np.array([float(v) if v.strip() else np.nan for v in table[:, i]], dtype=np.float64))
        except ValueError:
            bad = next(v for v in table[:, i] if v.strip() and not _is_float(v))
            raise UsageError(
                f"{path}: column {name!r} is not numeric (value {bad!r}); bastion reads numeric "
                f"features only — encode it first, or make it the label with label_column={name!r}"
            ) from None
    x = np.stack(cols, axis=1)
    _check_finite(x, path)
    y, names = _labels(np.array([v.strip() for v in table[:, li]]), path)
    meta: dict[str, object] = {"source": str(path), "label_column": label}
    x_tr, y_tr, x_te, y_te = _split(x, y, path, options, meta)
    if names:
        meta["classes"] = names
    if options.get("scale"):
        lo, hi = x_tr.min(dim=0).values, x_tr.max(dim=0).values
        span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
        x_tr, x_te = ((x_tr - lo) / span).clamp(0, 1), ((x_te - lo) / span).clamp(0, 1)
        meta.update(scale_min=lo.tolist(), scale_max=hi.tolist())
        bounds = (0.0, 1.0)
    else:
        lo_v, hi_v = float(x.min()), float(x.max())
        bounds = (lo_v, hi_v) if hi_v > lo_v else (lo_v, lo_v + 1.0)
    n_classes = len(names) if names else int(y.max()) + 1
    return Dataset(str(path), x_tr, y_tr, x_te, y_te, bounds, n_classes, features, meta)


def _is_float(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def _size(size: object) -> tuple[int, int]:
    parts: Any = size.replace("x", ",").split(",") if isinstance(size, str) else size
    try:
        h, w = (int(s) for s in parts)
    except (TypeError, ValueError):
        raise UsageError(f"size must be (H, W) or 'H,W', got {size!r}") from None
    if h < 1 or w < 1:
        raise UsageError(f"size must be positive, got {size!r}")
    return h, w


def _image_folder(
    root: Path, classes: list[str] | None, options: dict[str, object]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from PIL import Image

    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = classes or found
    if len(classes) < 2:
        raise UsageError(f"{root} must hold one subfolder of images per class (at least two), found {found}")
    if set(found) - set(classes):
        raise UsageError(f"{root} has class folders {sorted(set(found) - set(classes))} missing from the train split")
    size = options.get("size")
    gray = options.get("grayscale")
    files = [
        (f, k)
        for k, c in enumerate(classes)
        if (root / c).is_dir()
        for f in sorted((root / c).iterdir())
        if f.suffix.lower() in _IMAGE_SUFFIXES
    ]
    if not files:
        raise UsageError(f"{root}: no PNG or JPEG images found in the class folders")
    images, labels, first = [], [], None
    for f, k in files:
        try:
            with Image.open(f) as opened:
                if gray is None:
                    gray = opened.mode in ("1", "L", "LA", "I", "I;16")
                im = opened.convert("L" if gray else "RGB")
                if size is not None:
                    h, w = _size(size)
                    im = im.resize((w, h), Image.Resampling.BILINEAR)
                arr = np.asarray(im, dtype=np.float32) / 255.0
        except OSError as exc:
            raise UsageError(f"cannot read image {f}: {exc}") from None
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        if first is None:
            first = (f, arr.shape)
        elif arr.shape != first[1]:
            raise UsageError(
                f"images differ in shape: {first[0]} is {first[1]} but {f} is {arr.shape} "
                "(C, H, W): pass size=(H, W) to resize them"
            )
        images.append(arr)
        labels.append(k)
    return np.stack(images), np.array(labels, dtype=np.int64), classes


def _folder(path: Path, options: dict[str, object]) -> Dataset:
    if (path / "train").is_dir() and (path / "test").is_dir():
        x, y, classes = _image_folder(path / "train", None, options)
        opts = {**options, "grayscale": x.shape[1] == 1}
        x_te, y_te, _ = _image_folder(path / "test", classes, opts)
        if x_te.shape[1:] != x.shape[1:]:
            raise UsageError(
                f"{path}: test images are {x_te.shape[1:]} but train images are {x.shape[1:]}: pass size=(H, W)"
            )
        meta: dict[str, object] = {"source": str(path), "classes": classes}
        parts = _split(x, y, path, options, meta, x_te, y_te)
    else:
        x, y, classes = _image_folder(path, None, options)
        meta = {"source": str(path), "classes": classes}
        parts = _split(x, y, path, options, meta)
    x_tr, y_tr, x_te_t, y_te_t = parts
    return Dataset(str(path), x_tr, y_tr, x_te_t, y_te_t, (0.0, 1.0), len(classes), meta=meta)


def load_path(path: str | Path, **options: object) -> Dataset:
    """Load a ``.npz`` / ``.csv`` file or an image folder as a :class:`Dataset` (options: module docstring)."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"dataset path {str(p)!r} does not exist")
    kind = "folder" if p.is_dir() else p.suffix.lower()
    if kind not in _OPTIONS:
        raise UsageError(f"cannot read {p}: use a .npz file, a .csv file or a folder of images per class")
    unknown = set(options) - _OPTIONS[kind]
    if unknown:
        raise UsageError(
            f"unknown option(s) {sorted(unknown)} for a {kind} dataset: choose from {sorted(_OPTIONS[kind])}"
        )
    loader = {".npz": _npz, ".csv": _csv, "folder": _folder}[kind]
    return loader(p, options)
