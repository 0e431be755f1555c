"""Random-noise baseline: the floor a query-based attack must beat, at the same budget."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.evasion.noise import RandomNoise
from bastion.attacks.evasion.square import Square
from bastion.data import load_dataset
from bastion.errors import UsageError
from bastion.models.zoo import load_zoo
from blackbox_helpers import BlackBoxTorch
from blackbox_helpers import GradientFree as _Opaque


def _check_counts(r, max_queries: int) -> None:
    q = r.extra["queries"]
    assert int(q.sum()) == r.queries
    assert int(q.min()) >= 1 and int(q.max()) <= max_queries
    assert bool((q[~r.extra["query_success"]] == max_queries).all())  # a failed image used every draw


def test_square_beats_the_noise_floor_at_the_same_budget(mnist_cnn, mnist):
    x, y = mnist.x_test[:30], mnist.y_test[:30]
    model = BlackBoxTorch(_Opaque(mnist_cnn.module), n_classes=10, input_shape=(1, 28, 28), output="logits")
    noise = RandomNoise(eps=0.2, max_queries=300)(model, x, y)
    square = Square(eps=0.2, max_queries=300)(model, x, y)
    assert noise.robust_accuracy >= 0.8  # 0.93 measured: random directions barely hurt
    assert square.robust_accuracy <= 0.3  # 0.13 measured
    _check_counts(noise, 300)
    assert float(noise.norms.max()) <= 0.2 + 1e-6 and noise.gradients == 0
    # the draws that fooled are really on the Linf sphere (up to clipping at the bounds)
    fooled = noise.extra["query_success"] & noise.clean_correct
    if bool(fooled.any()):
        d = (noise.x_adv[fooled] - x[fooled]).abs()
        clipped = (noise.x_adv[fooled] == 0) | (noise.x_adv[fooled] == 1)
        assert bool((((d - 0.2).abs() < 1e-6) | clipped).all())


def test_noise_l2_targeted_and_sklearn():
    data = load_dataset("breast-cancer")
    model = load_zoo("cancer-gbt")
    x, y = data.x_test[:60], data.y_test[:60]
    r = RandomNoise(eps=1.0, norm="l2", max_queries=50)(model, x, y)
    assert float(r.norms.max()) <= 1.0 + 1e-5
    _check_counts(r, 50)
    t = 1 - y
    rt = RandomNoise(eps=0.5, max_queries=50)(model, x, y, t)
    assert torch.equal(rt.pred_adv[rt.success], t[rt.success])
    _check_counts(rt, 50)


def test_noise_invalid_args():
    with pytest.raises(UsageError, match="eps"):
        RandomNoise(eps=-0.3)
    with pytest.raises(UsageError, match="needs eps"):
        RandomNoise(eps=None)
    with pytest.raises(UsageError, match="max_queries"):
        RandomNoise(max_queries=0)
    with pytest.raises(UsageError, match="unknown norm"):
        RandomNoise(norm="lp")
