"""Transfer attack: an MLP surrogate trained on mnist-cnn's labels, MI-FGSM on it, replay on the CNN."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks import get_attack
from bastion.attacks.evasion.steps import random_start
from bastion.attacks.evasion.transfer import TransferAttack, train_surrogate
from bastion.errors import UsageError
from bastion.models.base import BaseClassifier


class Recording(BaseClassifier):
    """A black-box view of a model that records the size of every query batch."""

    def __init__(self, inner):
        super().__init__(n_classes=inner.n_classes, input_shape=inner.input_shape, bounds=inner.bounds)
        self.inner, self.batches = inner, []

    def _scores(self, x):
        self.batches.append(int(x.shape[0]))
        with torch.no_grad():
            return self.inner.logits(x)


@pytest.fixture(scope="module")
def setup(mnist, mnist_cnn):
    torch.set_num_threads(1)
    target = Recording(mnist_cnn)
    surrogate = train_surrogate(target, mnist.x_train[:2000], epochs=10, seed=0)
    return target, surrogate


def test_surrogate_is_trained_on_the_targets_labels_in_batches(setup):
    target, surrogate = setup
    assert target.batches[:2] == [1000, 1000]
    assert surrogate.white_box and tuple(surrogate.input_shape) == (1, 28, 28)


def test_transfer_drops_robust_accuracy_and_noise_does_not(setup, mnist, mnist_cnn):
    target, surrogate = setup
    x, y = mnist.x_test[:200], mnist.y_test[:200]
    before = target.n_queries
    n_batches = len(target.batches)
    r = TransferAttack(surrogate=surrogate, eps=0.3)(target, x, y)
    assert r.queries == 200  # the replay: one batched query
    assert target.batches[n_batches] == 200 and r.gradients == 0
    assert target.n_queries - before == 200 + 2 * 200  # replay + the result's clean/adv predictions
    assert r.clean_accuracy > 0.9
    assert r.robust_accuracy < 0.6, r.robust_accuracy
    assert r.extra["surrogate_success_rate"] > 0.9
    assert r.extra["transfer_success"].shape == (200,)
    noisy = random_start(x, "linf", 0.3, torch.Generator().manual_seed(0)).clamp(0, 1)
    assert float((mnist_cnn.predict(noisy) == y).float().mean()) > 0.9


def test_data_free_fallback_and_validation(mnist, mnist_cnn):
    torch.set_num_threads(1)
    x, y = mnist.x_test[:20], mnist.y_test[:20]
    r = get_attack("transfer", eps=0.3, surrogate_epochs=2, n_augment=1)(mnist_cnn, x, y)
    assert r.queries == 2 * 20 + 20  # labelling the batch and one noisy copy, then the replay
    with pytest.raises(UsageError, match="Attack"):
        TransferAttack(attack=3)
    with pytest.raises(UsageError, match="norms"):
        TransferAttack(norm="l1")
