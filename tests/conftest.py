"""Shared fixtures: small real models trained deterministically (cached in $BASTION_HOME)."""

from __future__ import annotations

import pytest
import torch

from bastion.data import load_dataset
from bastion.models.zoo import load_zoo


@pytest.fixture(scope="session")
def mnist():
    return load_dataset("mnist5k")


@pytest.fixture(scope="session")
def mnist_cnn():
    return load_zoo("mnist-cnn")


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="session")
def digits_mlp():
    return load_zoo("digits-mlp")


@pytest.fixture(scope="session")
def mnist_batch(mnist):
    """The first 200 mnist5k test images and labels."""
    return mnist.x_test[:200], mnist.y_test[:200]


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture
def one_thread(_few_threads):
    """Torch at one thread: small models train faster so, and do not fight a second process for the cores."""
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def quick_audit(tmp_path_factory, mnist_cnn, mnist):
    """A real quick-profile audit of zoo:mnist-cnn on 200 mnist5k test images: (report dict, output dir)."""
    from bastion.audit import run_audit

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("quick-audit") / "report"
    report = run_audit(mnist_cnn, mnist, out, profile="quick", n=200, model_spec="zoo:mnist-cnn", data_spec="mnist5k")
    return report, out


@pytest.fixture(scope="session")
def badnets_mnist(mnist):
    """(PoisonedData, TorchClassifier): BadNets at 5% on mnist5k (3x3 checkerboard, target 0) and mnist-cnn trained
    on it with the zoo's recipe (cached under $BASTION_HOME/test-models)."""
    from poison_helpers import badnets_mnist as make

    return make(mnist)
