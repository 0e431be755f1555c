import pytest
import torch

from bastion.data import load_dataset
from bastion.errors import UsageError


@pytest.mark.parametrize(
    "name,shape,n_train,n_test,k",
    [
        ("digits", (1, 8, 8), 1437, 360, 10),
        ("mnist5k", (1, 28, 28), 4000, 1000, 10),
        ("breast-cancer", (30,), 455, 114, 2),
    ],
)
def test_builtin_datasets_shapes_splits_and_bounds(name, shape, n_train, n_test, k):
    d = load_dataset(name)
    assert d.input_shape == shape and d.n_classes == k
    assert d.x_train.shape[0] == n_train and d.x_test.shape[0] == n_test
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    for x in (d.x_train, d.x_test):
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    # stratified: every class is in the test split in proportion
    frac = d.y_test.bincount(minlength=k).float() / n_test
    full = torch.cat([d.y_train, d.y_test]).bincount(minlength=k).float() / (n_train + n_test)
    assert float((frac - full).abs().max()) < 0.02
    # train and test are disjoint samples
    tr = {hash(r.numpy().tobytes()) for r in d.x_train.reshape(n_train, -1)}
    assert sum(hash(r.numpy().tobytes()) in tr for r in d.x_test.reshape(n_test, -1)) <= 0.02 * n_test


def test_split_is_fixed_and_test_order_is_mixed():
    a, b = load_dataset("mnist5k"), load_dataset("mnist5k")
    assert torch.equal(a.y_test, b.y_test) and torch.equal(a.x_train, b.x_train)
    assert len(set(a.y_test[:50].tolist())) >= 8  # the first n test images cover the classes


def test_breast_cancer_scaling_uses_training_ranges():
    d = load_dataset("breast-cancer")
    assert torch.allclose(d.x_train.min(0).values, torch.zeros(30)) and torch.allclose(
        d.x_train.max(0).values, torch.ones(30)
    )
    assert len(d.feature_names) == 30


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(UsageError, match="mnist5k"):
        load_dataset("cifar10")
