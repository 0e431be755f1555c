import pytest
import torch
from safetensors import safe_open

from bastion.data import load_dataset
from bastion.models.zoo import ZOO, load_zoo


@pytest.mark.parametrize(
    "name,floor",
    [
        ("digits-mlp", 0.95),
        pytest.param("mnist-cnn", 0.96, marks=pytest.mark.slow),
        ("cancer-mlp", 0.95),
        ("cancer-gbt", 0.95),
        ("cancer-logreg", 0.97),
        ("digits-logreg", 0.95),
    ],
)
def test_zoo_models_train_from_scratch_to_accuracy(tmp_path, monkeypatch, name, floor):
    monkeypatch.setenv("BASTION_HOME", str(tmp_path))
    model = load_zoo(name)
    data = load_dataset(ZOO[name].dataset)
    acc = float((model.predict(data.x_test) == data.y_test).float().mean())
    assert acc >= floor
    if ZOO[name].kind in ("torch", "logreg"):
        path = tmp_path / "zoo" / f"{name}.safetensors"
        with safe_open(str(path), "pt") as f:
            assert f.metadata()["bastion_arch"] == name
        again = load_zoo(name)  # from the cache: same weights, same predictions
        assert torch.equal(again.predict(data.x_test), model.predict(data.x_test))


def test_zoo_training_is_deterministic(tmp_path, monkeypatch):
    monkeypatch.setenv("BASTION_HOME", str(tmp_path / "a"))
    a = load_zoo("digits-mlp")
    monkeypatch.setenv("BASTION_HOME", str(tmp_path / "b"))
    b = load_zoo("digits-mlp")
    for (ka, va), (kb, vb) in zip(a.module.state_dict().items(), b.module.state_dict().items()):
        assert ka == kb and torch.allclose(va, vb, atol=1e-6)


def test_training_does_not_touch_the_global_rng(tmp_path, monkeypatch):
    monkeypatch.setenv("BASTION_HOME", str(tmp_path))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_zoo("cancer-mlp")
    assert torch.equal(torch.rand(3), expected)


def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("BASTION_HOME", str(tmp_path))
    (tmp_path / "zoo").mkdir()
    (tmp_path / "zoo" / "cancer-mlp.safetensors").write_bytes(b"not a safetensors file")
    model = load_zoo("cancer-mlp")
    data = load_dataset("breast-cancer")
    assert float((model.predict(data.x_test) == data.y_test).float().mean()) >= 0.95
