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
