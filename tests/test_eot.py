"""Expectation over Transformation on a randomised version of the real mnist-cnn zoo model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bastion.attacks.evasion.eot import EOT
from bastion.attacks.evasion.pgd import PGD
from bastion.errors import UsageError
from bastion.models.torch import TorchClassifier

SIGMA = 0.3


class NoisyNet(nn.Module):
    """A randomised defence: Gaussian noise added to the input inside the forward pass."""

    def __init__(self, inner: nn.Module, sigma: float, seed: int) -> None:
        super().__init__()
        self.inner, self.sigma = inner, sigma
        self.g = torch.Generator().manual_seed(seed)

    def forward(self, x):
        return self.inner(x + self.sigma * torch.randn(x.shape, generator=self.g))


def _noisy(module: nn.Module, seed: int) -> TorchClassifier:
    return TorchClassifier(NoisyNet(module, SIGMA, seed), n_classes=10, input_shape=(1, 28, 28), output="logits")


@pytest.fixture(scope="module")
def model(mnist_cnn):
    return mnist_cnn


@pytest.fixture(scope="module")
def data(mnist):
    return mnist.x_test[:100], mnist.y_test[:100]


def _grad(clf, x, y):
    xa = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(clf.logits(xa), y, reduction="sum"), xa)
    return g


def test_eot_gradient_variance_shrinks(model, data):
    x, y = data[0][:50], data[1][:50]
    noisy = _noisy(model.module, seed=1)
    eot = EOT(noisy, n_samples=16)
    g1, g2 = _grad(noisy, x, y), _grad(noisy, x, y)
    h1, h2 = _grad(eot, x, y), _grad(eot, x, y)
    spread_single = float((g1 - g2).norm() / (g1.norm() + g2.norm()))
    spread_eot = float((h1 - h2).norm() / (h1.norm() + h2.norm()))
    assert spread_single > 0.3  # the defence really is random
    assert spread_eot < 0.6 * spread_single  # ~1/sqrt(16) of it in theory


def test_eot_attack_beats_single_sample_attack(model, data):
    x, y = data[0][:60], data[1][:60]
    noisy = _noisy(model.module, seed=2)
    judge = EOT(_noisy(model.module, seed=99), n_samples=64)  # the expected prediction, fresh noise
    # early stopping trusts one noisy draw: the naive attack stops on lucky noise, EOT does not
    attack = PGD(eps=0.15, steps=10, step_size=0.0225)
    single = attack(noisy, x, y)
    wrapped = EOT(noisy, n_samples=8)
    averaged = attack(wrapped, x, y)
    with torch.no_grad():
        acc_clean = float((judge.predict(x) == y).float().mean())
        acc_single = float((judge.predict(single.x_adv) == y).float().mean())
        acc_eot = float((judge.predict(averaged.x_adv) == y).float().mean())
    assert acc_clean > 0.9
    assert acc_eot < acc_single - 0.15
    assert acc_eot < acc_clean - 0.35
    assert averaged.queries >= 8 * averaged.gradients  # every gradient cost n_samples forward draws


def test_eot_of_a_deterministic_model_is_the_model(model, data):
    x = data[0][:20]
    eot = EOT(model, n_samples=3)
    q = model.n_queries
    with torch.no_grad():
        assert torch.allclose(eot.logits(x), model.logits(x), atol=1e-5)
    assert eot.n_queries == 60 and model.n_queries - q == 80
    assert eot.white_box and eot.output == "logits" and eot.n_classes == 10


def test_transform_uses_the_seeded_generator(model, data):
    x = data[0][:20]

    def jitter(x, g):
        return (x + 0.2 * torch.randn(x.shape, generator=g, device=x.device)).clamp(0, 1)

    with torch.no_grad():
        a = EOT(model, n_samples=4, transform=jitter, seed=5).logits(x)
        b = EOT(model, n_samples=4, transform=jitter, seed=5).logits(x)
        c = EOT(model, n_samples=4, transform=jitter, seed=6).logits(x)
        clean = model.logits(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, clean)


def test_probabilities_are_averaged(model, data):
    x = data[0][:20]
    probs = TorchClassifier(
        nn.Sequential(NoisyNet(model.module, SIGMA, 3), nn.Softmax(dim=1)), n_classes=10, input_shape=(1, 28, 28)
    )
    eot = EOT(probs, n_samples=5)
    with torch.no_grad():
        p = eot.logits(x)
    assert eot.output == "probabilities"
    assert torch.allclose(p.sum(dim=1), torch.ones(20), atol=1e-5)


def test_attack_mode_delegates_and_restores(model):
    module = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(784, 10))
    module.train()
    eot = EOT(TorchClassifier(module, n_classes=10, input_shape=(1, 28, 28)), n_samples=2)
    with eot.attack_mode():
        assert not module[1].training
    assert module[1].training


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"n_samples": 0}, "n_samples"), ({"n_samples": 2.5}, "n_samples"), ({"transform": 3}, "transform")],
)
def test_invalid_arguments(model, kwargs, match):
    with pytest.raises(UsageError, match=match):
        EOT(model, **kwargs)
    with pytest.raises(UsageError, match="Classifier"):
        EOT(object())
