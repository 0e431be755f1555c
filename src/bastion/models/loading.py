"""``load_model``: one string names any model bastion can test; ``save_model`` writes safetensors.

Sources, tried in this order:

- ``zoo:NAME`` — a built-in model (:mod:`bastion.models.zoo`).
- ``http://…`` / ``https://…`` — a served model (:class:`RemoteClassifier`; needs input_shape, n_classes; the
  environment's ``BASTION_API_KEY``, when set, is sent as its bearer key).
- ``weights.safetensors`` — weights for a registered architecture (``arch=`` or the file's
  ``bastion_arch`` metadata, as written by :func:`save_model` and the zoo).
- ``model.onnx`` — :class:`OnnxClassifier` (black-box).
- TorchScript archives (``torch.jit.save``) and ``torch.export`` archives (``.pt2``), recognised by content.
- ``.pt`` / ``.pth`` / ``.bin`` — a state dict read with ``torch.load(weights_only=True)`` plus ``arch=``.
- ``package.module:function`` or ``path/to/file.py:function`` — your code returns an ``nn.Module``,
  a Classifier or a fitted scikit-learn estimator.

Never unpickled: a pickled whole module, ``.pkl`` / ``.joblib`` files, or a ``.pt2`` archive carrying
pickled payloads — loading those would run code embedded in the file, so they raise
:class:`UnsafeModelError` saying how to export the model safely instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import pickle
import sys
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UnsafeModelError, UsageError
from .architectures import ARCHITECTURES, Architecture, build_architecture
from .base import Classifier
from .saving import save_model  # re-exported: load_model and save_model are one pair
from .torch import TorchClassifier

__all__ = ["load_model", "save_model"]

_TORCH_SUFFIXES = {".pt", ".pth", ".pt2", ".bin", ".ts", ".torchscript", ".jit"}
_PICKLE_SUFFIXES = {".pkl", ".pickle", ".joblib", ".dill", ".cloudpickle"}
_SAFE_EXPORT = (
    "save the weights with safetensors.torch.save_file(model.state_dict(), 'model.safetensors') and "
    "pass --arch NAME, or export with torch.jit.script/trace, torch.export.save or torch.onnx.export"
)


def _unsafe(path: Path, what: str, advice: str = _SAFE_EXPORT) -> UnsafeModelError:
    return UnsafeModelError(
        f"{path} {what}; loading it would execute code embedded in the file, so bastion refuses it: {advice}"
    )


def _torch_classifier(
    module: nn.Module,
    *,
    n_classes: int | None,
    input_shape: tuple[int, ...] | None,
    bounds: tuple[float, float],
    source: str,
    freeze: bool = False,
) -> TorchClassifier:
    """Wrap a module; a missing n_classes is read from one probe forward pass on ``input_shape``."""
    if input_shape is None:
        first = next((m for m in module.modules() if not list(m.children())), None)
        if isinstance(first, nn.Linear):
            input_shape = (first.in_features,)
        else:
            raise UsageError(f"cannot tell the input shape of {source}: pass input_shape= (e.g. --input-shape 1,28,28)")
    input_shape = tuple(int(s) for s in input_shape)
    if freeze:
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
    if n_classes is None:
        flags = [(m, m.training) for m in module.modules()]
        module.eval()
        try:
            with torch.no_grad():
                out = module(torch.full((2, *input_shape), (bounds[0] + bounds[1]) / 2))
        except Exception as exc:
            raise UsageError(
                f"a probe forward pass of {source} on inputs (2, {', '.join(map(str, input_shape))}) "
                f"failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): "
                "check input_shape"
            ) from None
        finally:
            for m, flag in flags:
                m.training = flag
        out = out[0] if isinstance(out, (tuple, list)) else out.get("logits") if isinstance(out, Mapping) else out
        if not isinstance(out, Tensor) or out.dim() != 2:
            raise UsageError(
                f"{source} returned {getattr(out, 'shape', type(out).__name__)} for a probe batch; "
                "expected scores of shape (N, n_classes)"
            )
        n_classes = int(out.shape[1])
    return TorchClassifier(module, bounds=bounds, n_classes=n_classes, input_shape=input_shape)


def _load_into(name: str, state: Mapping[str, Tensor], path: Path, bounds: tuple[float, float] | None) -> Classifier:
    module, arch = build_architecture(name)
    try:
        module.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise UsageError(f"the weights in {path} do not fit architecture {name!r}: {detail}") from None
    clf = _torch_classifier(
        module,
        n_classes=arch.n_classes,
        input_shape=arch.input_shape,
        bounds=bounds or arch.bounds,
        source=str(path),
        freeze=True,
    )
    clf.arch = name
    return clf


def _safetensors(path: Path, arch: str | None, bounds: tuple[float, float] | None) -> Classifier:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except Exception as exc:
        raise UsageError(f"{path} is not a readable safetensors file: {exc}") from None
    name = arch or meta.get("bastion_arch")
    if not name:
        raise UsageError(
            f"{path} holds weights without an architecture name: pass arch= (one of "
            f"{', '.join(sorted(ARCHITECTURES))}) or register yours with register_architecture"
        )
    clf = _load_into(name, state, path, bounds)
    if isinstance(clf, TorchClassifier):
        clf.metadata = dict(meta)  # the training record (DP-SGD's epsilon, a defence's settings) travels with it
    return clf


def _zip_kind(path: Path) -> str | None:
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "torchscript"
    if any(n.endswith("/archive_format") or ("/models/" in n and n.endswith(".json")) for n in names):
        return "export"
    return None


def _check_export_archive(path: Path) -> None:
    """Refuse a ``.pt2`` whose loading would unpickle: torch.export.load falls back to full pickle."""
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            base = name.split("/", 1)[-1]
            if base.startswith(("data/weights/", "data/constants/")) and base.endswith(".pt"):
                raise _unsafe(path, "uses the legacy pickled weights format")
            if base.endswith(("_weights_config.json", "_constants_config.json")):
                config = json.loads(z.read(name)).get("config", {})
                for entry in config.values():
                    if entry.get("use_pickle") or not str(entry.get("path_name", "")).startswith(
                        ("weight_", "tensor_")
                    ):
                        raise _unsafe(path, "stores pickled objects among its weights or constants")
            if base.startswith("data/sample_inputs/"):
                try:
                    torch.load(z.open(name), weights_only=True)
                except Exception:
                    raise _unsafe(path, "stores pickled objects as its sample inputs") from None


class _ExportedModule(nn.Module):
    """An exported graph as a Module whose mode switches are no-ops: the mode was fixed at export time."""

    def __init__(self, graph_module: nn.Module) -> None:
        super().__init__()
        self.graph_module = graph_module

    def forward(self, x: Tensor) -> Tensor:
        return self.graph_module(x)

    def train(self, mode: bool = True) -> _ExportedModule:
        self.training = mode
        return self


def _exported(
    path: Path, input_shape: tuple[int, ...] | None, n_classes: int | None, bounds: tuple[float, float]
) -> Classifier:
    _check_export_archive(path)
    try:
        ep = torch.export.load(str(path))
    except Exception as exc:
        raise UsageError(f"torch.export.load cannot read {path}: {exc}") from None
    spec = ep.graph_signature
    if len(spec.user_inputs) != 1:
        raise UsageError(f"{path} takes {len(spec.user_inputs)} inputs; bastion needs exactly one")
    nodes = {n.name: n for n in ep.graph.nodes}
    val = nodes[spec.user_inputs[0]].meta.get("val")
    if val is not None:
        if isinstance(val.shape[0], int):
            raise UsageError(
                f"{path} was exported with a fixed batch size {val.shape[0]}: re-export with a dynamic "
                "batch, torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim('batch')},))"
            )
        if input_shape is None and all(isinstance(d, int) for d in val.shape[1:]):
            input_shape = tuple(val.shape[1:])
    out = next(n for n in ep.graph.nodes if n.op == "output").args[0]
    out_val = out[0].meta.get("val") if isinstance(out, (tuple, list)) and out and hasattr(out[0], "meta") else None
    if n_classes is None and out_val is not None and out_val.dim() == 2 and isinstance(out_val.shape[1], int):
        n_classes = int(out_val.shape[1])
    return _torch_classifier(
        _ExportedModule(ep.module()),
        n_classes=n_classes,
        input_shape=input_shape,
        bounds=bounds,
        source=str(path),
        freeze=True,
    )


def _torch_file(
    path: Path,
    arch: Architecture | None,
    bounds: tuple[float, float] | None,
    n_classes: int | None,
    input_shape: tuple[int, ...] | None,
) -> Classifier:
    kind = _zip_kind(path)
    n_classes = n_classes or (arch.n_classes if arch else None)
    input_shape = input_shape or (arch.input_shape if arch else None)
    b = bounds or (arch.bounds if arch else (0.0, 1.0))
    if kind == "torchscript":
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise UsageError(f"torch.jit.load cannot read {path}: {exc}") from None
        return _torch_classifier(
            module, n_classes=n_classes, input_shape=input_shape, bounds=b, source=str(path), freeze=True
        )
    if kind == "export":
        return _exported(path, input_shape, n_classes, b)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if any(s in str(exc).lower() for s in ("invalid load key", "unsupported operand")):  # not a pickle
            raise UsageError(f"{path} is not a readable torch file (torch.save / state dict)") from None
        raise _unsafe(path, "holds pickled Python objects (e.g. a whole module saved with torch.save(model))") from None
    except Exception as exc:
        raise UsageError(f"torch.load cannot read {path}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not (isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values())):
        raise UsageError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors: {_SAFE_EXPORT}")
    if arch is None:
        raise UsageError(
            f"{path} holds weights without an architecture: pass arch= (one of "
            f"{', '.join(sorted(ARCHITECTURES))}) or register yours with register_architecture"
        )
    return _load_into(arch.name, obj, path, bounds)


def resolve_function(spec: str, what: str = "model factory") -> Callable[..., Any]:
    """The callable named by ``"package.module:function"`` or ``"path/to/file.py:function"`` (resolved against the
    working directory); a :class:`UsageError` naming ``what`` when it cannot be imported or is not callable."""
    target, _, attr = spec.rpartition(":")
    if not attr.isidentifier() or not target:
        raise UsageError(f"{what} {spec!r} must be 'module:function' or 'file.py:function'")
    if target.endswith(".py") and not Path(target).is_file():
        raise UsageError(f"{what} file {target!r} does not exist")
    added = os.getcwd() not in sys.path  # 'module:function' resolves against the working directory
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        if target.endswith(".py"):
            file = Path(target).resolve()
            name = f"bastion_user_{file.stem}"
            mod_spec = importlib.util.spec_from_file_location(name, file)
            if mod_spec is None or mod_spec.loader is None:
                raise UsageError(f"cannot import {target!r} as a Python module")
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[name] = module
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except UsageError:
        raise
    except ModuleNotFoundError as exc:
        raise UsageError(f"cannot import {target!r} for {what} {spec!r}: {exc}") from None
    except Exception as exc:
        raise UsageError(f"importing {target!r} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if added:
            sys.path.remove(os.getcwd())
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UsageError(f"{target!r} has no function {attr!r} ({what}s are 'module:function')")
    return fn


def _factory(
    spec: str, bounds: tuple[float, float] | None, n_classes: int | None, input_shape: tuple[int, ...] | None
) -> Classifier:
    target, _, attr = spec.rpartition(":")
    if not attr.isidentifier() or not target:
        raise UsageError(f"model {spec!r} is not an existing file, a zoo:NAME, a URL or a module:function factory")
    fn = resolve_function(spec)
    try:
        obj = fn()
    except Exception as exc:
        raise UsageError(f"model factory {spec!r} raised {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, nn.Module):
        return _torch_classifier(
            obj, n_classes=n_classes, input_shape=input_shape, bounds=bounds or (0.0, 1.0), source=spec
        )
    if hasattr(obj, "classes_") and hasattr(obj, "predict"):
        from .sklearn import SklearnClassifier

        clf = SklearnClassifier(obj, input_shape=input_shape, bounds=bounds or (0.0, 1.0))
        if n_classes is not None and n_classes != clf.n_classes:
            raise UsageError(f"n_classes={n_classes} but the estimator from {spec!r} has {clf.n_classes} classes")
        return clf
    if isinstance(obj, Classifier):
        return obj
    raise UsageError(
        f"model factory {spec!r} returned {type(obj).__name__}; expected an nn.Module, a Classifier "
        "or a fitted scikit-learn estimator"
    )


def load_model(
    spec: str | os.PathLike[str],
    *,
    arch: str | None = None,
    bounds: tuple[float, float] | None = None,
    n_classes: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    log: Callable[[str], None] | None = None,
) -> Classifier:
    """Load the model named by ``spec`` (see the module docstring for every source) as a Classifier."""
    s = str(spec)
    shape = tuple(int(d) for d in input_shape) if input_shape is not None else None
    if s.startswith("zoo:"):
        from .zoo import load_zoo

        return load_zoo(s[4:], log)
    if s.startswith(("http://", "https://")):
        from .remote import RemoteClassifier

        if shape is None or n_classes is None:
            raise UsageError("a model URL needs input_shape= and n_classes= (--input-shape, --n-classes)")
        key = os.environ.get("BASTION_API_KEY") or None  # the bearer key of a guarded endpoint (bastion serve)
        return RemoteClassifier(s, input_shape=shape, n_classes=n_classes, bounds=bounds or (0.0, 1.0), api_key=key)
    path = Path(s)
    if not path.exists() and ":" in s and not s.startswith(":"):
        return _factory(s, bounds, n_classes, shape)
    if not path.is_file():
        raise UsageError(f"model {s!r} is not an existing file, a zoo:NAME, a URL or a module:function factory")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _safetensors(path, arch, bounds)
    if suffix == ".onnx":
        from .onnx import OnnxClassifier

        return OnnxClassifier(path, bounds=bounds or (0.0, 1.0), input_shape=shape, n_classes=n_classes)
    if suffix in _PICKLE_SUFFIXES:
        raise _unsafe(
            path,
            "is a pickle",
            "convert a scikit-learn model to ONNX with skl2onnx "
            "(options={'zipmap': False}), or return it from your own code with a 'module:function' factory",
        )
    if suffix in _TORCH_SUFFIXES or _zip_kind(path):
        return _torch_file(path, build_architecture(arch)[1] if arch else None, bounds, n_classes, shape)
    raise UsageError(
        f"unknown model file type {suffix or '(none)'!r} for {path}: use .safetensors, .onnx, "
        ".pt/.pth (state dict), TorchScript, .pt2 (torch.export), zoo:NAME, a URL or module:function"
    )
