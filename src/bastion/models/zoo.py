"""Built-in reference models, trained deterministically on first use and cached.

The cache lives in ``$BASTION_HOME/zoo`` (default ``~/.cache/bastion/zoo``) as safetensors files
whose metadata records the architecture, training data and settings; a cached file is only reused
when that metadata matches the current recipe. ``cancer-gbt`` (scikit-learn gradient-boosted
trees) trains in about a second and is rebuilt in-process rather than pickled. ``cancer-logreg`` and
``digits-logreg`` are scikit-learn ``StandardScaler`` + ``LogisticRegression`` fits converted to torch
(:class:`~bastion.models.linear.LogisticModel`: the standardisation inside, probabilities out) and
cached like the networks: the victims of equation-solving extraction, with a closed form to check.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..data.dataset import Dataset
from ..errors import UsageError
from .base import Classifier

__all__ = ["ZOO", "ZooEntry", "bastion_home", "load_zoo", "recipe_arch"]

RECIPE_VERSION = "1"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    dataset: str
    description: str
    kind: str  # 'torch', 'logreg' (scikit-learn fitted, converted to torch and cached) or 'sklearn'


ZOO: dict[str, ZooEntry] = {
    "digits-mlp": ZooEntry("digits-mlp", "digits", "3-layer MLP on 8x8 digits", "torch"),
    "mnist-cnn": ZooEntry("mnist-cnn", "mnist5k", "2-conv CNN on MNIST (mnist5k)", "torch"),
    "cancer-mlp": ZooEntry("cancer-mlp", "breast-cancer", "3-layer MLP on breast-cancer features", "torch"),
    "cancer-gbt": ZooEntry("cancer-gbt", "breast-cancer", "scikit-learn gradient-boosted trees (black-box)", "sklearn"),
    "cancer-logreg": ZooEntry(
        "cancer-logreg", "breast-cancer", "scikit-learn logistic regression (standardised), probabilities", "logreg"
    ),
    "digits-logreg": ZooEntry(
        "digits-logreg",
        "digits",
        "scikit-learn multinomial logistic regression (standardised), probabilities",
        "logreg",
    ),
}

LOGREG_SETTINGS = {"C": 1.0, "max_iter": 5000, "solver": "lbfgs", "standardise": True}
"""How the logistic-regression entries are fitted (recorded in their cache metadata)."""


def recipe_arch(dataset: str) -> str | None:
    """The architecture of the zoo's network trained on the built-in ``dataset`` (``"mnist5k"`` -> ``"mnist-cnn"``),
    or ``None``: what a copy or surrogate of a model of that data is built as by default."""
    return next((e.name for e in ZOO.values() if e.kind == "torch" and e.dataset == dataset), None)


def bastion_home() -> Path:
    return Path(os.environ.get("BASTION_HOME") or Path.home() / ".cache" / "bastion")


def _fit_logreg(name: str, data: Dataset) -> tuple[nn.Module, dict[str, object]]:
    """Fit ``StandardScaler`` + ``LogisticRegression`` on ``data``'s training split; the torch module and a record."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from .linear import logistic_from_sklearn

    x = data.x_train.reshape(data.x_train.shape[0], -1).double().numpy()
    scaler = StandardScaler().fit(x)
    est = LogisticRegression(C=LOGREG_SETTINGS["C"], max_iter=LOGREG_SETTINGS["max_iter"], solver="lbfgs")
    est.fit(scaler.transform(x), data.y_train.numpy())
    module = logistic_from_sklearn(scaler, est, tuple(data.input_shape))
    with torch.no_grad():
        acc = float((module(data.x_test).argmax(1) == data.y_test).double().mean())
    return module, {"arch": name, "data": data.name, **LOGREG_SETTINGS, "test_accuracy": acc}


def _train_torch(name: str, log: Callable[[str], None] | None) -> Classifier:
    from safetensors.torch import load_file, save_file

    from ..data import load_dataset
    from .architectures import build_architecture
    from .torch import TorchClassifier
    from .training import TRAIN_CONFIGS, train_architecture

    entry = ZOO[name]
    logreg = entry.kind == "logreg"
    settings = LOGREG_SETTINGS if logreg else TRAIN_CONFIGS[name].__dict__
    meta = {
        "bastion_arch": name,
        "bastion_data": entry.dataset,
        "bastion_recipe": RECIPE_VERSION,
        "bastion_train": json.dumps(settings, sort_keys=True),
    }
    path = bastion_home() / "zoo" / f"{name}.safetensors"
    with torch.random.fork_rng(devices=[]):  # building initialises weights: leave the caller's RNG alone
        module, arch = build_architecture(name)
    cached = False
    if path.exists():
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                file_meta = f.metadata() or {}
            if all(file_meta.get(k) == v for k, v in meta.items()):
                module.load_state_dict(load_file(str(path)))
                cached = True
        except Exception:  # a corrupt or foreign cache file: retrain and overwrite it
            cached = False
    if not cached:
        if log:
            log(f"training zoo model {name} on {entry.dataset} (first use; cached in {path.parent})")
        data = load_dataset(entry.dataset)
        module, record = _fit_logreg(name, data) if logreg else train_architecture(name, data, TRAIN_CONFIGS[name])
        meta["bastion_record"] = json.dumps(record)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp), metadata=meta)
        os.replace(tmp, path)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    clf = TorchClassifier(
        module,
        bounds=arch.bounds,
        n_classes=arch.n_classes,
        input_shape=arch.input_shape,
        output="probabilities" if logreg else "logits",
    )
    clf.arch = name
    return clf


def _train_gbt() -> Classifier:
    from sklearn.ensemble import GradientBoostingClassifier

    from ..data import load_dataset
    from .sklearn import SklearnClassifier

    data = load_dataset("breast-cancer")
    est = GradientBoostingClassifier(n_estimators=150, max_depth=3, learning_rate=0.1, random_state=0)
    est.fit(data.x_train.numpy(), data.y_train.numpy())
    return SklearnClassifier(est, input_shape=(30,), bounds=(0.0, 1.0))


def load_zoo(name: str, log: Callable[[str], None] | None = None) -> Classifier:
    """Return the built-in model ``name`` as a Classifier (training and caching it on first use)."""
    if name not in ZOO:
        raise UsageError(f"unknown zoo model {name!r}: choose one of {', '.join(ZOO)}")
    if ZOO[name].kind == "sklearn":
        return _train_gbt()
    return _train_torch(name, log)
