"""DP-SGD through Opacus on the one trainer: accuracy bands, real clipping and noise, accounting, resume, errors.

Small real models (digits-mlp on sklearn digits) trained in seconds; the noise is checked by its effect (a tiny
epsilon keeps accuracy near chance) and the clipping against a per-example loop written out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bastion.cli import main
from bastion.defenses.privacy import (
    DPConfig,
    PoissonSampler,
    dp_config_for,
    dp_fix,
    dp_train,
    dp_train_architecture,
)
from bastion.defenses.privacy.sampling import urandom_normal
from bastion.errors import UsageError
from bastion.training import accuracy

# opacus is the optional `dp` extra (in `test`, so CI runs these); without it the module is skipped, not failed
pytest.importorskip("opacus")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_accuracy_bands_and_spent_epsilon(digits):
    """Training works at epsilon 8 (a floor) and the noise is really there at epsilon 0.05 (a ceiling)."""
    accs, spent = {}, {}
    for eps in (8.0, 0.05):
        out = dp_train_architecture(
            "digits-mlp", digits.x_train, digits.y_train, dp_config_for("digits-mlp", epsilon=eps)
        )
        accs[eps] = accuracy(out.module, digits.x_test, digits.y_test)
        spent[eps] = out.record["epsilon"]
        assert out.record["steps"] == 30 * math.ceil(1437 / 64)
        assert out.record["sample_rate"] == pytest.approx(1 / math.ceil(1437 / 64))
    assert accs[8.0] > 0.85, accs
    assert accs[0.05] < 0.5, accs
    for eps, e in spent.items():  # the accountant's epsilon for the run is the target (Opacus' 0.01 tolerance)
        assert eps - 0.01 <= e <= eps * 1.001


def test_noise_free_recipe_reaches_the_plain_accuracy(digits):
    out = dp_train_architecture(
        "digits-mlp", digits.x_train, digits.y_train, dp_config_for("digits-mlp", noise_multiplier=0.0)
    )
    assert accuracy(out.module, digits.x_test, digits.y_test) > 0.9
    assert out.record["epsilon"] is None  # no noise, no guarantee


def test_clipping_and_scaling_match_a_per_example_loop():
    """One DP step with zero noise equals the hand-written DP-SGD update: clip each example's gradient to C, sum,
    divide by the expected batch size, take an SGD step."""
    torch.manual_seed(0)
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    ref = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    model.load_state_dict(ref.state_dict())
    cfg = DPConfig(epsilon=None, noise_multiplier=0.0, max_grad_norm=0.1, epochs=1, batch_size=40, lr=0.5, delta=1e-3)
    dp_train(model, x, y, cfg)  # one epoch of ceil(40/40) = 1 step, a Poisson batch (q = 1)
    summed = [torch.zeros_like(p) for p in ref.parameters()]
    for i in range(40):
        grads = torch.autograd.grad(F.cross_entropy(ref(x[i : i + 1]), y[i : i + 1]), list(ref.parameters()))
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        for s, g in zip(summed, grads):
            s += g * min(1.0, 0.1 / (float(norm) + 1e-6))
    with torch.no_grad():
        for p, s in zip(ref.parameters(), summed):
            p -= 0.5 * s / 40
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_poisson_sampler_includes_each_record_with_probability_q():
    s = PoissonSampler(1000, 100)
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(1000)
    sizes = []
    for _ in range(20):
        for idx in s(1000, 100, g):
            counts[idx] += 1
            sizes.append(idx.numel())
    assert s.steps == 10 and s.sample_rate == 0.1
    assert abs(np.mean(sizes) - 100) < 3  # expected batch size
    assert float(counts.mean()) == pytest.approx(20.0, rel=0.03)  # 200 steps x q
    assert 2.0 < float(counts.std()) < 6.0  # binomial(200, 0.1): sd 4.2, not a fixed permutation (sd 0)


def test_secure_noise_from_urandom_has_the_right_law(digits):
    z = urandom_normal(torch.Size([200_000]), 2.0)
    assert float(z.mean()) == pytest.approx(0.0, abs=0.03)
    assert float(z.std()) == pytest.approx(2.0, rel=0.02)
    out = dp_train_architecture(
        "digits-mlp",
        digits.x_train,
        digits.y_train,
        dp_config_for("digits-mlp", epsilon=8.0, epochs=2, secure=True, accountant="rdp"),
    )
    assert out.record["secure_rng"] in ("os.urandom", "torchcsprng")


def test_checkpoint_resume_is_identical_and_keeps_the_accounting(digits, tmp_path):
    cfg = dp_config_for("digits-mlp", epsilon=4.0, epochs=3, accountant="rdp")
    full = dp_train_architecture("digits-mlp", digits.x_train, digits.y_train, cfg)
    ck = tmp_path / "dp.ckpt"

    def stop_after_first(entry):
        if entry["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dp_train_architecture(
            "digits-mlp", digits.x_train, digits.y_train, cfg, checkpoint=ck, on_epoch=stop_after_first
        )
    resumed = dp_train_architecture("digits-mlp", digits.x_train, digits.y_train, cfg, checkpoint=ck)
    for p, q in zip(full.module.state_dict().values(), resumed.module.state_dict().values()):
        torch.testing.assert_close(p, q)
    assert resumed.record["epsilon"] == pytest.approx(full.record["epsilon"], rel=1e-9)
    assert resumed.record["steps"] == full.record["steps"]


def test_batchnorm_is_replaced_with_a_message_or_refused():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    said = []
    fixed = dp_fix(net, log=said.append)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fixed.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in fixed.modules())
    assert said and "BatchNorm" in said[0] and "GroupNorm" in said[0]
    with pytest.raises(UsageError, match="BatchNorm"):
        dp_fix(net, fix=False)


def test_bad_settings_are_one_line_errors(digits):
    with pytest.raises(UsageError, match="not below 1/N"):
        dp_train_architecture("digits-mlp", digits.x_train, digits.y_train, DPConfig(delta=0.01))
    with pytest.raises(UsageError, match="cannot be reached"):
        dp_train_architecture("digits-mlp", digits.x_train, digits.y_train, DPConfig(epsilon=1e-4, epochs=50))
    with pytest.raises(UsageError, match="exactly one"):
        DPConfig(epsilon=1.0, noise_multiplier=1.0)
    with pytest.raises(UsageError, match="accountant"):
        DPConfig(accountant="moments")


def test_harden_cli_trains_from_scratch_and_records_the_privacy(tmp_path, capsys):
    out = tmp_path / "dp.safetensors"
    args = ["harden", "--arch", "digits-mlp", "--data", "digits", "--defense", "dp-sgd", "--epsilon", "6"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--epochs", "4", "--out", str(out), "--json"])
    assert exit_info.value.code == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["epsilon"] == pytest.approx(6.0, rel=0.02) and rec["delta"] == 1e-5
    assert rec["noise_multiplier"] > 0 and rec["clean_accuracy"] > 0.5
    from safetensors import safe_open

    import bastion

    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["bastion_defense"])["defense"] == "dp-sgd"
    clf = bastion.load_model(str(out))
    assert json.loads(clf.metadata["bastion_record"])["epsilon"] == pytest.approx(rec["epsilon"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--defense", "dp-sgd", "--out", "x.safetensors"], "--arch"),
        (["--defense", "dp-sgd", "--arch", "digits-mlp", "--delta", "0.5", "--out", "x.safetensors"], "below 1/N"),
        (["--defense", "pgd-at", "--model", "zoo:digits-mlp", "--epsilon", "3", "--out", "x.safetensors"], "dp-sgd"),
        (["--defense", "pgd-at", "--out", "x.safetensors"], "--model"),
    ],
)
def test_harden_cli_refuses_bad_dp_options(extra, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["harden", "--data", "digits", *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
