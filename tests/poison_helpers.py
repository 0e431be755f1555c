"""Models trained on poisoned data for the poisoning, sanitisation and scanning tests.

:func:`train_cached` trains a registered architecture on a dataset with the zoo's recipe (the one trainer) and
caches the weights under ``$BASTION_HOME/test-models`` keyed by a hash of the training data and the recipe, so
the suites that share a poisoned model train it once per machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import torch
from safetensors.torch import load_file, save_file

from bastion.attacks.poisoning import BadNets, PoisonedData
from bastion.data import Dataset
from bastion.models import TorchClassifier
from bastion.models.architectures import build_architecture
from bastion.models.training import TRAIN_CONFIGS, TrainConfig, train_architecture
from bastion.models.zoo import bastion_home


def _key(data: Dataset, arch: str, config: TrainConfig) -> str:
    h = hashlib.sha256()
    for t in (data.x_train, data.y_train):
        h.update(t.contiguous().numpy().tobytes())
    h.update(json.dumps([arch, dataclasses.asdict(config)], sort_keys=True).encode())
    return h.hexdigest()[:20]


def train_cached(data: Dataset, arch: str = "mnist-cnn", config: TrainConfig | None = None) -> TorchClassifier:
    """``arch`` trained on ``data.x_train`` with ``config`` (default: the zoo's recipe), as a frozen classifier."""
    config = config or TRAIN_CONFIGS.get(arch, TrainConfig())
    path = bastion_home() / "test-models" / f"{arch}-{_key(data, arch, config)}.safetensors"
    if path.exists():
        module, a = build_architecture(arch)
        module.load_state_dict(load_file(str(path)))
    else:
        module, _ = train_architecture(arch, data, config)
        a = build_architecture(arch)[1]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp))
        tmp.replace(path)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    clf = TorchClassifier(module, bounds=a.bounds, n_classes=a.n_classes, input_shape=a.input_shape)
    clf.arch = arch
    return clf


def badnets_mnist(mnist: Dataset, rate: float = 0.05) -> tuple[PoisonedData, TorchClassifier]:
    """BadNets on mnist5k (3x3 checkerboard at the bottom right, target 0, ``rate`` of the training split) and
    mnist-cnn trained on it with the zoo's recipe."""
    poisoned = BadNets(rate=rate, target=0, seed=0).poison(mnist)
    torch.set_num_threads(2)
    return poisoned, train_cached(poisoned.data, "mnist-cnn")


def logistic_accuracy(data: Dataset) -> float:
    """Test accuracy of scikit-learn's LogisticRegression (defaults, max_iter=1000) fitted on ``data``'s training
    split (inputs flattened): the victim of the label-flipping tests."""
    from sklearn.linear_model import LogisticRegression

    x = data.x_train.reshape(data.x_train.shape[0], -1).double().numpy()
    model = LogisticRegression(max_iter=1000).fit(x, data.y_train.numpy())
    return float(model.score(data.x_test.reshape(data.x_test.shape[0], -1).double().numpy(), data.y_test.numpy()))
