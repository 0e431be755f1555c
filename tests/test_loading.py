"""load_model / save_model round trips on the real zoo model, and the refusal of unsafe pickles."""

from __future__ import annotations

import os
import pickle
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from bastion.data import load_dataset
from bastion.errors import UnsafeModelError, UsageError
from bastion.models.loading import load_model, save_model
from bastion.models.onnx import OnnxClassifier
from bastion.models.sklearn import SklearnClassifier
from bastion.models.torch import TorchClassifier
from bastion.models.zoo import load_zoo

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*(legacy TorchScript-based ONNX|is deprecated|will be removed).*:DeprecationWarning"
)


@pytest.fixture(scope="module")
def mnist():
    clf = load_zoo("mnist-cnn")
    x = load_dataset("mnist5k").x_test[:200]
    with torch.no_grad():
        ref = clf.module(x)
    return clf.module, x, ref


def _check_same(loaded, x, ref, atol=1e-4):
    assert tuple(loaded.input_shape) == (1, 28, 28)
    assert loaded.n_classes == 10
    with torch.no_grad():
        out = loaded.logits(x)
    assert torch.equal(loaded.predict(x), ref.argmax(1))
    assert torch.allclose(out, ref, atol=atol)
    assert loaded.output == "logits"


def test_zoo_spec(mnist):
    _module, x, ref = mnist
    _check_same(load_model("zoo:mnist-cnn"), x, ref, atol=0)


def test_bad_zoo_name_and_missing_file(tmp_path):
    with pytest.raises(UsageError, match="unknown zoo model"):
        load_model("zoo:nope")
    with pytest.raises(UsageError, match="not an existing file"):
        load_model(tmp_path / "absent.safetensors")
    weird = tmp_path / "model.xyz"
    weird.write_bytes(b"hello")
    with pytest.raises(UsageError, match="unknown model file type"):
        load_model(weird)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a torch file")
    with pytest.raises(UsageError, match="not a readable torch file"):
        load_model(garbage, arch="mnist-cnn")
    with pytest.raises(UsageError, match="not an existing file"):
        load_model("ftp://example.com/model")


def test_safetensors_with_metadata_and_with_arch(mnist, tmp_path):
    module, x, ref = mnist
    path = save_model(module, tmp_path / "m.safetensors", arch="mnist-cnn", metadata={"epochs": 3})
    loaded = load_model(path)
    _check_same(loaded, x, ref, atol=0)
    assert isinstance(loaded, TorchClassifier) and loaded.white_box
    # weights only (no metadata): the architecture must come from arch=
    bare = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(bare))
    with pytest.raises(UsageError, match="arch="):
        load_model(bare)
    _check_same(load_model(bare, arch="mnist-cnn"), x, ref, atol=0)
    with pytest.raises(UsageError, match="do not fit architecture 'digits-mlp'"):
        load_model(bare, arch="digits-mlp")
    with pytest.raises(UsageError, match="unknown architecture"):
        load_model(bare, arch="resnet9000")


def test_save_model_validates(mnist, tmp_path):
    module, _, _ = mnist
    with pytest.raises(UsageError, match="safetensors"):
        save_model(module, tmp_path / "m.pt", arch="mnist-cnn")
    with pytest.raises(UsageError, match="do not fit"):
        save_model(module, tmp_path / "m.safetensors", arch="cancer-mlp")
    assert not (tmp_path / "m.safetensors").exists()


def test_state_dict_pt_needs_arch(mnist, tmp_path):
    module, x, ref = mnist
    path = tmp_path / "sd.pt"
    torch.save(module.state_dict(), path)
    with pytest.raises(UsageError, match="arch="):
        load_model(path)
    _check_same(load_model(path, arch="mnist-cnn"), x, ref, atol=0)
    ckpt = tmp_path / "ckpt.pth"
    torch.save({"model_state_dict": module.state_dict(), "epoch": 3}, ckpt)
    _check_same(load_model(ckpt, arch="mnist-cnn"), x, ref, atol=0)


def test_torchscript(mnist, tmp_path):
    module, x, ref = mnist
    path = tmp_path / "traced.pt"
    torch.jit.trace(module, x[:2]).save(str(path))
    with pytest.raises(UsageError, match="input_shape"):
        load_model(path)
    loaded = load_model(path, input_shape=(1, 28, 28))  # n_classes from a probe pass
    _check_same(loaded, x, ref)
    assert loaded.white_box
    xg = x[:4].clone().requires_grad_(True)
    grad = torch.autograd.grad(loaded.logits(xg).sum(), xg)[0]
    assert grad.abs().sum() > 0
    _check_same(load_model(path, arch="mnist-cnn"), x, ref)  # shapes from the architecture


def test_torch_export(mnist, tmp_path):
    module, x, ref = mnist
    ep = torch.export.export(module, (x[:4],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path / "model.pt2"
    torch.export.save(ep, str(path))
    loaded = load_model(path)
    _check_same(loaded, x, ref)  # shapes read from the exported graph
    with loaded.attack_mode():  # mode switches are no-ops on an exported graph, not errors
        xg = x[:3].clone().requires_grad_(True)
        grad = torch.autograd.grad(loaded.logits(xg).sum(), xg)[0]
    assert grad.shape == xg.shape and grad.abs().sum() > 0
    fixed = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(module, (x[:4],)), str(fixed))
    with pytest.raises(UsageError, match="fixed batch size 4"):
        load_model(fixed)


def test_onnx(mnist, tmp_path):
    module, x, ref = mnist
    path = tmp_path / "model.onnx"
    torch.onnx.export(
        module,
        (x[:2],),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    loaded = load_model(path)
    assert isinstance(loaded, OnnxClassifier) and not loaded.white_box
    _check_same(loaded, x, ref)


class _Payload:
    """Unpickling this would create ``marker`` — the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_module_refused(mnist, tmp_path):
    module, _, _ = mnist
    path = tmp_path / "full.pt"
    torch.save(module, path)
    with pytest.raises(UnsafeModelError, match="execute code embedded in the file") as info:
        load_model(path, arch="mnist-cnn")
    assert "safetensors" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".pkl", ".joblib"])
def test_refused_pickle_runs_no_code(tmp_path, suffix):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    if suffix in (".pt", ".pth"):
        torch.save({"weight": torch.zeros(2), "payload": _Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(_Payload(marker)))
    # the payload is real: unpickling it does create the marker
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.exists()
    with pytest.raises(UnsafeModelError):
        load_model(path, arch="mnist-cnn")
    assert not marker.exists()


def test_pt2_with_pickled_sample_inputs_refused(mnist, tmp_path):
    """torch.export.load falls back to full unpickling for sample inputs; bastion checks first."""
    import zipfile

    module, x, _ = mnist
    good = tmp_path / "good.pt2"
    torch.export.save(torch.export.export(module, (x[:4],), dynamic_shapes=({0: torch.export.Dim("b")},)), str(good))
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(evil, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if "/data/sample_inputs/" in item.filename:
                import io

                buf = io.BytesIO()
                torch.save(((_Payload(marker),), {}), buf)
                data = buf.getvalue()
            zout.writestr(item, data)
    with pytest.raises(UnsafeModelError, match="sample inputs"):
        load_model(evil)
    assert not marker.exists()


def _write_factory(tmp_path: Path) -> Path:
    src = tmp_path / "my_models.py"
    src.write_text(
        textwrap.dedent("""
        import torch
        from torch import nn
        from sklearn.linear_model import LogisticRegression
        from sklearn.datasets import load_digits

        def mlp():
            torch.manual_seed(0)
            return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

        def cnn():
            torch.manual_seed(0)
            return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))

        def logreg():
            d = load_digits()
            return LogisticRegression(max_iter=500).fit(d.data / 16.0, d.target)

        def not_a_model():
            return 42
    """)
    )
    return src


def test_module_function_factories(tmp_path, monkeypatch):
    src = _write_factory(tmp_path)
    mlp = load_model(f"{src}:mlp")
    assert isinstance(mlp, TorchClassifier) and mlp.input_shape == (64,) and mlp.n_classes == 10
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    x = torch.rand(5, 64)
    assert torch.allclose(mlp.logits(x), ref(x))
    with pytest.raises(UsageError, match="input_shape"):
        load_model(f"{src}:cnn")
    cnn = load_model(f"{src}:cnn", input_shape=(1, 8, 8))
    assert cnn.n_classes == 10 and cnn.input_shape == (1, 8, 8)
    lr = load_model(f"{src}:logreg", input_shape=(1, 8, 8))
    assert isinstance(lr, SklearnClassifier) and lr.white_box and lr.n_classes == 10
    # dotted module path, resolved from the working directory
    monkeypatch.chdir(tmp_path)
    assert load_model("my_models:mlp").n_classes == 10
    with pytest.raises(UsageError, match="no function 'missing'"):
        load_model("my_models:missing")
    with pytest.raises(UsageError, match="returned int"):
        load_model("my_models:not_a_model")
    with pytest.raises(UsageError, match="cannot import"):
        load_model("no_such_module_xyz:f")


def test_url_needs_shape():
    with pytest.raises(UsageError, match="input_shape"):
        load_model("http://127.0.0.1:9/predict")
    remote = load_model("http://127.0.0.1:9/predict", input_shape=(64,), n_classes=10)
    assert remote.n_classes == 10 and not remote.white_box


def test_no_stray_files_after_save(mnist, tmp_path):
    module, _, _ = mnist
    save_model(module, tmp_path / "m.safetensors", arch="mnist-cnn")
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]
