"""One model protocol: wrappers say what they wrap, features are a declared capability, nothing is guessed."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import bastion
from bastion.attacks import EOT, PGD
from bastion.defenses.certification import SmoothedClassifier
from bastion.defenses.detection import DetectingClassifier, MahalanobisDetector
from bastion.errors import UsageError
from bastion.models import HasFeatures, TorchClassifier, WrappedClassifier, unwrap, wrapper_chain
from bastion.models.features import last_linear_input


def test_wrappers_delegate_and_name_what_they_wrap(digits, digits_mlp):
    eot = EOT(digits_mlp, n_samples=2)
    smooth = SmoothedClassifier(eot, sigma=0.25, n=50)
    det = MahalanobisDetector().fit(digits_mlp, digits.x_train[200:], digits.y_train[200:])
    det.calibrate(digits.x_train[:200])
    gate = DetectingClassifier(digits_mlp, det)
    for w in (eot, smooth, gate):
        assert isinstance(w, WrappedClassifier) and isinstance(w, bastion.Classifier)
        assert (w.n_classes, w.input_shape, w.bounds, w.white_box) == (10, (1, 8, 8), (0.0, 1.0), True)
    assert smooth.wrapped is eot and eot.wrapped is digits_mlp and gate.wrapped is digits_mlp
    assert wrapper_chain(smooth) == [smooth, eot, digits_mlp] and unwrap(smooth) is digits_mlp
    assert unwrap(digits_mlp) is digits_mlp
    assert smooth.output == "logits" and eot.output == digits_mlp.output  # smoothing fixes its own output
    assert not isinstance(smooth, HasFeatures)  # a wrapper's scores are not its inner model's: no features


def test_wrappers_count_their_own_queries(digits, digits_mlp):
    x = digits.x_test[:7]
    eot = EOT(digits_mlp, n_samples=3)
    inner0 = digits_mlp.n_queries
    eot.logits(x)
    assert eot.n_queries == 21 and digits_mlp.n_queries - inner0 == 21


def test_a_wrapper_follows_a_model_that_learns_its_input_shape(digits):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    model = TorchClassifier(module, n_classes=10)  # no input_shape: the first batch decides
    eot = EOT(model, n_samples=1)
    assert model.input_shape == () and eot.input_shape == ()
    result = PGD(eps=0.1, steps=3)(eot, digits.x_test[:5], digits.y_test[:5])
    assert model.input_shape == (1, 8, 8) == eot.input_shape and result.x_adv.shape == (5, 1, 8, 8)


def test_a_wrapper_needs_a_classifier():
    with pytest.raises(UsageError, match="wraps a bastion Classifier"):
        EOT(nn.Linear(2, 2))


def test_features_are_the_hooked_activations_batched_and_without_gradients(digits, digits_mlp):
    x = digits.x_test[:23]
    assert isinstance(digits_mlp, HasFeatures)
    assert digits_mlp.penultimate_layer == last_linear_input(digits_mlp.module) == "5:input"
    assert digits_mlp.feature_layers("relu") == ["2", "4"] and digits_mlp.feature_layers("linear")[-1] == "5:input"
    module = digits_mlp.module
    with torch.no_grad():  # by hand: the input of the last Linear is the output of the module before it
        want = module[:-1](x)
    (f,) = digits_mlp.features(x, batch_size=5)
    assert torch.allclose(f, want, atol=1e-6) and not f.requires_grad
    xg = x.clone().requires_grad_(True)
    (fg,) = digits_mlp.features(xg, grad=True)
    assert fg.requires_grad
    (g,) = torch.autograd.grad(fg.sum(), xg)
    assert float(g.abs().sum()) > 0
    z, (f1, f2) = digits_mlp.logits_and_features(x, ["1", digits_mlp.penultimate_layer])
    assert torch.allclose(z, module(x), atol=1e-6) and f1.shape == (23, 128) and torch.allclose(f2, want, atol=1e-6)
    with pytest.raises(UsageError, match="no submodule named 'nope'"):
        digits_mlp.features(x, ["nope"])


def test_feature_detectors_refuse_a_model_without_the_capability(digits, digits_mlp):
    eot = EOT(digits_mlp, n_samples=1)  # a Classifier, but it declares no features
    with pytest.raises(UsageError, match="declares no features capability"):
        MahalanobisDetector().fit(eot, digits.x_train[:100], digits.y_train[:100])


def test_the_library_never_imports_the_cli():
    code = (
        "import sys, bastion, bastion.audit, bastion.serve, bastion.defenses.training, bastion.models.zoo, "
        "bastion.defenses.certification, bastion.defenses.detection; "
        "print(sorted(m for m in sys.modules if m == 'bastion.cli' or m.startswith('bastion.cli.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
