"""HE-friendly architectures, their derived ``NAME-he`` variants, conversion by fine-tuning, encrypted inference of
real trained networks and the per-sample TenSEAL baseline. (The compiled program against the torch module, as a
property over random HE-friendly networks, is tests/test_he_core.py's.)"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from bastion.defenses.encrypted import compile_model
from bastion.errors import UsageError
from bastion.models.architectures import ARCHITECTURES, build_architecture, he_variant
from bastion.models.he import PolyAct, he_friendly, he_rewrites
from bastion.models.training import TRAIN_CONFIGS, he_finetune, recipe, train_architecture, train_recipe


def test_mnist_he_cnn_is_the_tenseal_tutorial_network_with_polyact():
    module, spec = build_architecture("mnist-he-cnn")
    conv, act1, flat, fc1, act2, fc2 = module
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (1, 4, (7, 7), (3, 3))
    assert isinstance(act1, PolyAct) and isinstance(act2, PolyAct) and isinstance(flat, nn.Flatten)
    assert (fc1.in_features, fc1.out_features, fc2.out_features) == (256, 64, 10)
    program = compile_model(module, spec.input_shape)
    # conv, square, fc1, square, fc2: the tutorial's depth; 49 taps x 256 outputs + 256 x 64 + 64 x 10 products
    assert program.depth == 5 and program.plaintext_multiplications == 49 * 256 + 256 * 64 + 64 * 10
    assert compile_model(build_architecture("digits-he-mlp")[0], (1, 8, 8)).depth == 3


def test_a_derived_he_architecture_resolves_on_lookup_and_only_for_registered_bases():
    name = "cancer-mlp-he"
    if name in ARCHITECTURES.names():  # another test derived it first: start from scratch
        ARCHITECTURES.unregister(name)
    assert name in ARCHITECTURES  # derived by the lookup itself
    module, spec = build_architecture(name)
    assert spec.input_shape == (30,) and spec.n_classes == 2
    assert not any(isinstance(m, nn.ReLU) for m in module.modules())
    assert sum(isinstance(m, PolyAct) for m in module.modules()) == 2
    assert "no-such-arch-he" not in ARCHITECTURES
    with pytest.raises(UsageError, match="unknown architecture"):
        build_architecture("no-such-arch-he")


def test_he_variant_keeps_an_already_friendly_architecture_and_the_recipe_follows_the_base():
    assert he_variant("mnist-he-cnn") == "mnist-he-cnn"
    assert he_variant("digits-logreg") == "digits-logreg"
    assert he_variant("Digits-MLP") == "digits-mlp-he"
    assert recipe("mnist-cnn-he") == TRAIN_CONFIGS["mnist-cnn"]
    assert recipe("mnist-he-cnn") == TRAIN_CONFIGS["mnist-he-cnn"]


def test_he_rewrites_names_what_he_friendly_replaces():
    module = build_architecture("mnist-cnn")[0]
    assert he_rewrites(module) == [
        "1: ReLU -> PolyAct",
        "2: MaxPool2d -> AvgPool2d",
        "4: ReLU -> PolyAct",
        "5: MaxPool2d -> AvgPool2d",
        "8: ReLU -> PolyAct",
    ]
    assert he_rewrites(he_friendly(module)) == []


def test_he_finetune_converts_a_trained_relu_network_and_leaves_it_untouched(digits, one_thread):
    config = dataclasses.replace(TRAIN_CONFIGS["digits-mlp"], epochs=10)
    original, _ = train_architecture("digits-mlp", digits, config)
    weights = [p.clone() for p in original.parameters()]
    converted, rec = he_finetune(original, "digits-mlp", digits, epochs=3)
    assert rec["arch"] == "digits-mlp-he" and rec["replaced"] == ["2: ReLU -> PolyAct", "4: ReLU -> PolyAct"]
    assert rec["accuracy_before"] > 0.9 and rec["accuracy_after"] > 0.9
    assert rec["accuracy_change"] == pytest.approx(rec["accuracy_after"] - rec["accuracy_before"])
    assert len(rec["history"]) == 3
    assert sum(isinstance(m, nn.ReLU) for m in original.modules()) == 2  # the original keeps its ReLUs and weights
    assert all(torch.equal(a, b) for a, b in zip(weights, original.parameters(), strict=True))
    # fine-tuning moved the copy's weights away from the original's
    assert any(not torch.equal(a, b) for a, b in zip(weights, converted.parameters(), strict=True))
    assert compile_model(converted, (1, 8, 8)).depth == 5
    with pytest.raises(UsageError, match="epochs must be >= 1"):
        he_finetune(original, "digits-mlp", digits, epochs=0)


# -- encrypted inference of a trained HE-friendly network -----------------------------------------------------------
@pytest.fixture(scope="module")
def digits_he_mlp(digits):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small model trains faster at one thread, and does not fight a second process
    try:
        clf, rec = train_recipe(digits, "digits-he-mlp")
    finally:
        torch.set_num_threads(threads)
    assert rec["test_accuracy"] > 0.93
    return clf


def test_digits_he_mlp_encrypted_accuracy_is_within_one_point_of_plaintext(digits, digits_he_mlp, one_thread):
    pytest.importorskip("tenseal", reason="the he extra (TenSEAL) is installed by the test extra")
    from bastion.defenses.encrypted.bench import he_bench

    clf = digits_he_mlp
    x, y = digits.x_test[:120], digits.y_test[:120]
    program = compile_model(clf.module, clf.input_shape)
    with torch.no_grad():
        plain_pred = clf.predict(x).numpy()
    r = he_bench(program, x.numpy(), y.numpy(), plain_pred, naive_n=0)
    assert r["n"] == 120 and r["agreement"] >= 0.99
    assert abs(r["encrypted_accuracy"] - r["plain_accuracy"]) <= 0.01
    assert r["max_abs_error"] < 0.1 and r["depth"] == 3 and r["security_bits"] == 128
    assert r["request_bytes"] == r["payload_bytes"] + r["context_bytes"] and "naive_seconds_per_sample" not in r


def test_the_per_sample_baseline_computes_the_program(digits, digits_he_mlp, one_thread):
    pytest.importorskip("tenseal", reason="the he extra (TenSEAL) is installed by the test extra")
    from bastion.defenses.encrypted.bench import TUTORIAL_CONTEXT, naive_tenseal

    x = digits.x_test[:3].numpy()
    program = compile_model(digits_he_mlp.module, (1, 8, 8))
    res = naive_tenseal(digits_he_mlp.module, x, program=program)
    reference = program.plain(x)
    assert res.context == TUTORIAL_CONTEXT and res.method == "ckks_vector.mm per sample"  # depth 3: the tutorial's
    assert res.scores.shape == (3, 10) and np.abs(res.scores - reference).max() < 0.5  # a 2**26 scale
    assert np.array_equal(res.scores.argmax(1), reference.argmax(1)) and res.ciphertext_bytes > 100_000
    with pytest.raises(UsageError, match="at least one sample"):
        naive_tenseal(program, x[:0])


@pytest.mark.slow
def test_mnist_he_cnn_encrypted_on_the_whole_test_split_and_the_tutorial_convolution(mnist, one_thread):
    pytest.importorskip("tenseal", reason="the he extra (TenSEAL) is installed by the test extra")
    from bastion.defenses.encrypted.bench import he_bench

    clf, rec = train_recipe(mnist, "mnist-he-cnn")
    assert rec["test_accuracy"] > 0.94
    program = compile_model(clf.module, clf.input_shape)
    with torch.no_grad():
        plain_pred = clf.predict(mnist.x_test).numpy()
    r = he_bench(program, mnist.x_test.numpy(), mnist.y_test.numpy(), plain_pred, naive_n=2, module=clf.module)
    assert r["n"] == 1000 and r["agreement"] >= 0.995
    assert abs(r["encrypted_accuracy"] - r["plain_accuracy"]) <= 0.005
    # the tutorial's 2**26 scale costs a few units on logits up to ~60 (0.002 with a 2**40 scale, measured)
    assert r["naive_method"].startswith("im2col") and r["naive_agreement"] == 1.0 and r["naive_max_abs_error"] < 5
    assert r["speedup"] > 1
