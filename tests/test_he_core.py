"""CKKS core (issue 18): parameters against the HE security standard, compilation against the torch module, the
client/server protocol against the plaintext model — real TenSEAL, real models, no mocks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

ts = pytest.importorskip("tenseal", reason="the he extra (TenSEAL) is part of the test install; CI runs these")

from bastion.data import load_dataset  # noqa: E402
from bastion.defenses.encrypted import (  # noqa: E402
    SECURITY_128,
    CKKSParams,
    HEClient,
    HEError,
    HEServer,
    choose_params,
    compile_model,
)
from bastion.defenses.encrypted.program import Affine, Square  # noqa: E402
from bastion.defenses.encrypted.protocol import pack, unpack  # noqa: E402
from bastion.errors import UsageError  # noqa: E402
from bastion.models.he import PolyAct, he_friendly  # noqa: E402
from bastion.models.zoo import load_zoo  # noqa: E402

# -- parameters ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", range(1, 16))
def test_params_are_128_bit_secure_smallest_ring_and_enough_levels(depth: int) -> None:
    p = choose_params(depth)
    assert p.total_bits <= SECURITY_128[p.poly_modulus_degree]
    assert p.depth == depth and p.scale_bits >= 25
    assert all(b == p.scale_bits for b in p.coeff_mod_bit_sizes[1:-1])
    smaller = p.poly_modulus_degree // 2
    if smaller in SECURITY_128:  # the next smaller ring cannot hold this depth at a 25-bit scale
        assert 2 * (25 + 10) + depth * 25 > SECURITY_128[smaller]


def test_params_refuse_weaker_than_128_bits_and_seal_agrees() -> None:
    with pytest.raises(UsageError, match="below 128-bit security"):
        CKKSParams(4096, (40, 40, 40), 40)  # 120 bits > 109
    with pytest.raises(UsageError, match="depth must be >= 1"):
        choose_params(0)
    with pytest.raises(UsageError, match="does not fit CKKS"):
        choose_params(40)
    # SEAL (TenSEAL's backend) enforces the same table: the chosen sets are accepted, one bit more is not
    p = choose_params(3)
    ts.context(ts.SCHEME_TYPE.CKKS, p.poly_modulus_degree, coeff_mod_bit_sizes=list(p.coeff_mod_bit_sizes))
    extra = SECURITY_128[p.poly_modulus_degree] - p.total_bits + 1
    with pytest.raises(ValueError):
        ts.context(
            ts.SCHEME_TYPE.CKKS,
            p.poly_modulus_degree,
            coeff_mod_bit_sizes=[*p.coeff_mod_bit_sizes[:-1], p.coeff_mod_bit_sizes[-1] + extra],
        )


# -- compilation -----------------------------------------------------------------------------------------------


@st.composite
def _he_nets(draw: st.DrawFn) -> nn.Sequential:
    torch.manual_seed(draw(st.integers(0, 10_000)))
    layers: list[nn.Module] = [nn.Conv2d(1, draw(st.integers(1, 3)), 3, stride=draw(st.integers(1, 2)))]
    if draw(st.booleans()):
        layers.append(nn.AvgPool2d(2))
    layers.append(nn.Flatten())
    width = None
    for _ in range(draw(st.integers(0, 2))):
        a = draw(st.floats(0.05, 1.0))
        layers.append(PolyAct(a, draw(st.floats(-1, 1)), draw(st.floats(-1, 1))))
        width = draw(st.integers(2, 6))
        layers.append(nn.LazyLinear(width))
    if draw(st.booleans()):
        layers.append(PolyAct())  # an activation last: its constant becomes an AddConst step
    net = nn.Sequential(*layers)
    net(torch.zeros(1, 1, 8, 8))  # materialise the lazy layers
    return net.eval()


@settings(max_examples=25, deadline=None)
@given(net=_he_nets(), seed=st.integers(0, 1000))
def test_compiled_program_equals_the_module(net: nn.Sequential, seed: int) -> None:
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    program = compile_model(net, (1, 8, 8))
    with torch.no_grad():
        want = net.double()(x.double()).numpy()
    np.testing.assert_allclose(program.plain(x.numpy()), want, rtol=1e-9, atol=1e-9)
    activations = sum(isinstance(m, PolyAct) for m in net)
    # conv, pooling and flatten compose into one affine map; each activation adds a squaring
    assert program.depth == 1 + 2 * activations - (1 if isinstance(net[-1], PolyAct) else 0)


def test_compile_refuses_what_ckks_cannot_evaluate_naming_the_layer() -> None:
    relu = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10))
    with pytest.raises(UsageError, match=r"layer 2 \(ReLU\).*--arch digits-mlp --he-friendly"):
        compile_model(relu, (1, 8, 8), arch="digits-mlp")
    pool = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(18, 3))
    with pytest.raises(UsageError, match=r"layer 1 \(MaxPool2d\)"):
        compile_model(pool, (1, 8, 8))
    friendly = he_friendly(pool)
    assert isinstance(friendly[1], nn.AvgPool2d) and isinstance(pool[1], nn.MaxPool2d)
    assert compile_model(friendly, (1, 8, 8)).depth == 1

    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x))

    with pytest.raises(UsageError, match=r"not an nn\.Sequential"):
        compile_model(Custom(), (4,))
    soft = compile_model(nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1)), (4,))
    assert soft.depth == 1 and "dropped" in soft.layers[-1]


# -- protocol --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_logreg() -> tuple[HEServer, np.ndarray, np.ndarray]:
    clf = load_zoo("digits-logreg")
    data = load_dataset("digits")
    server = HEServer(compile_model(clf.module, (1, 8, 8)), model="zoo:digits-logreg")
    with torch.no_grad():
        pred = clf.predict(data.x_test).numpy()
    return server, data.x_test.numpy(), pred


def test_digits_logreg_encrypted_agrees_with_the_plaintext_model(digits_logreg) -> None:
    server, x, pred = digits_logreg
    client = HEClient(server.spec())
    payload = client.encrypt(x)
    scores = client.decrypt(server.evaluate(client.public_context(), payload))
    assert scores.shape == (len(x), 10)
    agreement = float(np.mean(scores.argmax(1) == pred))
    assert agreement >= 0.995, agreement
    error = np.abs(scores - server.program.plain(x)).max()
    assert 0 < error < 0.05, error  # CKKS is approximate, and close
    assert server.params.poly_modulus_degree == 4096 and server.program.depth == 1


def test_server_refuses_secret_keys_other_parameters_and_bad_framing(digits_logreg) -> None:
    server, x, _ = digits_logreg
    client = HEClient(server.spec())
    payload, public = client.encrypt(x[:5]), client.public_context()
    with pytest.raises(UsageError, match="NaN or infinite"):
        client.encrypt(np.where(np.arange(64) == 3, np.nan, x[0].reshape(-1))[None])
    with pytest.raises(UsageError, match=r"inputs must be \(n, 64\)"):
        client.encrypt(x[:2, :, :4])
    with pytest.raises(HEError, match="secret key"):
        server.evaluate(client.context.serialize(save_secret_key=True), payload)
    other_spec = server.spec()
    other_spec["params"] = choose_params(3).as_dict()  # N=8192: another ring and chain
    other = HEClient(other_spec)
    with pytest.raises(HEError, match="not this model's"):
        server.evaluate(other.public_context(), other.encrypt(x[:5]))
    with pytest.raises(HEError, match="BHE1"):
        server.evaluate(public, b"XXXX" + payload[4:])
    with pytest.raises(HEError, match="truncated"):
        server.evaluate(public, payload[:-10])
    n, chunks = unpack(payload)
    with pytest.raises(HEError, match="one per input feature"):
        server.evaluate(public, pack(n, [(chunks[0][0], chunks[0][1][:-1])]))
    with pytest.raises(HEError, match="do not add up"):
        server.evaluate(public, pack(n + 1, chunks))
    assert all(not ctx.is_private() for ctx in server._contexts.values())


def test_batches_larger_than_the_slots_are_chunked_and_poly_nets_stay_close() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), PolyAct(), nn.Linear(6, 3)).eval()
    server = HEServer(compile_model(net, (16,)))
    client = HEClient(server.spec())
    slots = server.params.slots
    x = np.random.default_rng(0).random((slots + 7, 16))
    payload = client.encrypt(x)
    assert [size for size, _ in unpack(payload)[1]] == [slots, 7]
    scores = client.decrypt(server.evaluate(client.public_context(), payload))
    with torch.no_grad():
        want = net.double()(torch.from_numpy(x)).numpy()
    assert scores.shape == want.shape
    assert np.abs(scores - want).max() < 1e-3 * max(1.0, float(np.abs(want).max()))
    assert any(isinstance(s, Square) for s in server.program.steps)
    assert sum(isinstance(s, Affine) for s in server.program.steps) == 2
    assert math.isclose(server.params.depth, 3)


# -- audit probe -----------------------------------------------------------------------------------------------


def _probe(model, data, out, **params):
    from bastion.audit import run_audit
    from bastion.audit.profiles import Profile

    report = run_audit(model, data, out, profile=Profile("t", "encrypted only", 120, {"encrypted": params}))
    (probe,) = report["probes"]
    return probe


def test_probe_measures_encrypted_inference_and_skips_relu_models(tmp_path, digits, digits_mlp) -> None:
    probe = _probe(load_zoo("digits-logreg"), digits, tmp_path / "a", n=120)
    assert probe["status"] == "ok", probe.get("reason")
    m = probe["metrics"]
    assert m["he_agreement"] >= 0.99 and 0 < m["he_max_abs_error"] < 0.05
    assert abs(m["he_accuracy"] - m["he_plain_accuracy"]) <= 0.01 and m["he_plain_accuracy"] > 0.9
    assert m["he_security_bits"] == 128 and m["he_depth"] == 1 and m["he_seconds_per_sample"] > 0
    assert {c["id"]: c["status"] for c in probe["checks"]} == {"encrypted-agrees": "pass", "security-128": "pass"}
    skipped = _probe(digits_mlp, digits, tmp_path / "b")
    assert skipped["status"] == "skipped" and "(ReLU)" in skipped["reason"] and "--he-friendly" in skipped["reason"]


def test_activation_detector_reads_polyact_outputs_or_a_logistic_models_features(digits) -> None:
    from bastion.defenses.detection import ActivationDetector
    from bastion.models.torch import TorchClassifier

    logreg = load_zoo("digits-logreg")
    det = ActivationDetector().fit(logreg, digits.x_train, digits.y_train)
    assert det.layers_ == ["linear:input"]  # no activation: the standardised inputs of its one linear layer
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), PolyAct(), nn.Linear(16, 10)).eval()
    clf = TorchClassifier(net, bounds=(0.0, 1.0), n_classes=10, input_shape=(1, 8, 8))
    det = ActivationDetector().fit(clf, digits.x_train, digits.y_train)
    assert det.layers_ == ["2"]
    threshold = det.calibrate(digits.x_test[:180], fpr=0.05)
    noise = torch.rand(100, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert float((det.score(noise) > threshold).float().mean()) > 0.9  # uniform noise is far from digits


def test_a_full_size_cnn_compiles_sparsely_counting_each_receptive_field_once() -> None:
    from bastion.models.architectures import build_architecture

    torch.manual_seed(0)
    net, _ = build_architecture("mnist-cnn-he")  # conv 1->32, pool, conv 32->64, pool, 1600->128, 128->10
    program = compile_model(net, (1, 28, 28))  # dense, this took a minute and ~7 GB; sparse, seconds
    # each output's non-zeros are the inputs in its receptive field (random weights: none is zero):
    # conv1: 3x3 pixels; conv2 after 2x2 pooling: 32 channels x 6x6; linear after pooling 11x11 -> 5x5: 64 x 10x10
    fields = [32 * 26 * 26 * 9, 64 * 11 * 11 * 32 * 6 * 6, 128 * 64 * 10 * 10, 10 * 128]
    affines = [s for s in program.steps if isinstance(s, Affine)]
    assert [s.nonzeros for s in affines] == fields and program.plaintext_multiplications == sum(fields)
    assert program.depth == 7 and program.n_outputs == 10
    assert all(s.weight.format == "csr" and np.all(s.weight.data != 0) for s in affines)
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = net.double()(x.double()).numpy()
    np.testing.assert_allclose(program.plain(x.numpy()), want, rtol=1e-9, atol=1e-9 * np.abs(want).max())
