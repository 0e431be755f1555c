"""Built-in reference models, trained deterministically on first use and cached.

The cache lives in ``$BASTION_HOME/zoo`` (default ``~/.cache/bastion/zoo``) as safetensors files
whose metadata records the architecture, training data and settings; a cached file is only reused
when that metadata matches the current recipe. ``cancer-gbt`` (scikit-learn gradient-boosted
trees) trains in about a second and is rebuilt in-process rather than pickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from .base import Classifier

__all__ = ["ZOO", "ZooEntry", "bastion_home", "load_zoo"]

RECIPE_VERSION = "1"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    dataset: str
    description: str
    kind: str  # 'torch' or 'sklearn'


ZOO: dict[str, ZooEntry] = {
    "digits-mlp": ZooEntry("digits-mlp", "digits", "3-layer MLP on 8x8 digits", "torch"),
    "mnist-cnn": ZooEntry("mnist-cnn", "mnist5k", "2-conv CNN on MNIST (mnist5k)", "torch"),
    "cancer-mlp": ZooEntry("cancer-mlp", "breast-cancer", "3-layer MLP on breast-cancer features", "torch"),
    "cancer-gbt": ZooEntry("cancer-gbt", "breast-cancer", "scikit-learn gradient-boosted trees (black-box)", "sklearn"),
}


def bastion_home() -> Path:
    return Path(os.environ.get("BASTION_HOME") or Path.home() / ".cache" / "bastion")


def _train_torch(name: str, log: Callable[[str], None] | None) -> Classifier:
    from safetensors.torch import load_file, save_file

    from ..data import load_dataset
    from .architectures import build_architecture
    from .torch import TorchClassifier
    from .training import TRAIN_CONFIGS, train_architecture

    entry = ZOO[name]
    config = TRAIN_CONFIGS[name]
    meta = {
        "bastion_arch": name,
        "bastion_data": entry.dataset,
        "bastion_recipe": RECIPE_VERSION,
        "bastion_train": json.dumps(config.__dict__, sort_keys=True),
    }
    path = bastion_home() / "zoo" / f"{name}.safetensors"
    import torch

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
        module, record = train_architecture(name, load_dataset(entry.dataset), config)
        meta["bastion_record"] = json.dumps(record)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp), metadata=meta)
        os.replace(tmp, path)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    clf = TorchClassifier(
        module, bounds=arch.bounds, n_classes=arch.n_classes, input_shape=arch.input_shape, output="logits"
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
