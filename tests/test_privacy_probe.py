"""The ``privacy`` audit probe, run alone through the audit runner on digits-mlp: the zoo's model (no DP) leaks —
the canary audit proves epsilon well above 0, the check passes with nothing claimed; a DP-SGD digits-mlp at epsilon
4 saved with its record shows the claim in the report and an empirical bound below it; models bastion cannot
retrain are skipped with the reason; the profiles, parameters and gates that wire the probe in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bastion.audit import PROBES, run_audit
from bastion.audit.gates import parse_gate
from bastion.audit.probes.privacy import PrivacyProbe, dp_config_from, dp_summary, model_metadata
from bastion.audit.profiles import PROFILES, Profile
from bastion.errors import UsageError
from bastion.models.loading import load_model
from bastion.models.torch import TorchClassifier
from bastion.models.zoo import load_zoo

CANARIES = 100


pytestmark = pytest.mark.usefixtures("one_thread")


def _audit(model, data, out, **params):
    """The privacy probe alone; (its result dict, the report)."""
    report = run_audit(model, data, out, profile=Profile("t", "privacy only", 50, {"privacy": params}))
    (probe,) = report["probes"]
    assert probe["probe"] == "privacy"
    return probe, report


def _checks(probe):
    return {c["id"]: c for c in probe["checks"]}


@pytest.fixture(scope="module")
def dp_model(tmp_path_factory, digits):
    """A DP-SGD digits-mlp at epsilon 4 (10 epochs) saved with its record: (path, record)."""
    from bastion.defenses.privacy.dpsgd import dp_config_for, dp_train_architecture
    from bastion.training import save_trained

    torch.set_num_threads(1)
    config = dp_config_for("digits-mlp", epsilon=4.0, epochs=10)
    trained = dp_train_architecture("digits-mlp", digits.x_train, digits.y_train, config)
    path = tmp_path_factory.mktemp("dp") / "dp-mlp.safetensors"
    save_trained(trained.module, path, trained.record, arch="digits-mlp")
    return path, trained.record


def test_a_model_without_dp_leaks_and_nothing_is_claimed(tmp_path, digits_mlp, digits):
    probe, report = _audit(digits_mlp, digits, tmp_path / "r", canaries=CANARIES)
    assert probe["status"] == "ok", probe["reason"]
    m = probe["metrics"]
    assert "privacy_epsilon" not in m and m["privacy_delta"] == 1e-5
    assert 0.5 < m["privacy_epsilon_lower_bound"] < 10  # mislabelled canaries are memorised: ~2 with 100 of them
    assert 0.9 < m["privacy_test_accuracy"] <= 1.0
    assert 0.8 < m["privacy_canary_auc"] <= 1.0 and 0.0 <= m["privacy_canary_tpr@fpr=0.001"] <= 1.0
    assert 0.0 <= m["privacy_natural_auc"] <= 1.0
    checks = _checks(probe)
    assert checks["empirical-epsilon-below-claim"]["status"] == "pass"
    assert "No differential-privacy claim" in checks["empirical-epsilon-below-claim"]["explanation"]
    assert checks["retrained-matches-model"]["status"] == "pass"
    assert probe["risk"] == "high"  # a lower bound above 1 without DP
    assert probe["summary"].startswith("no differential privacy")
    assert probe["params"]["differential_privacy"] == "no differential privacy"
    assert probe["params"]["canaries"] == CANARIES and probe["params"]["arch"] == "digits-mlp"
    audit = probe["artifacts"]["canary_audit"]
    assert audit["defense"] == "none" and audit["violation"] is False and audit["canaries"]["m"] == CANARIES
    assert report["metrics"]["privacy_epsilon_lower_bound"] == m["privacy_epsilon_lower_bound"]
    assert [p["id"] for p in probe["plots"]] == ["privacy-epsilon-bound"]
    html = (tmp_path / "r" / "index.html").read_text()
    assert 'id="probe-privacy"' in html and 'data-plot="privacy-epsilon-bound"' in html


def test_a_dp_model_shows_its_claim_and_the_audit_stays_below_it(tmp_path, dp_model, digits):
    path, record = dp_model
    assert abs(record["epsilon"] - 4.0) < 0.1
    model = load_model(path)
    probe, _ = _audit(model, digits, tmp_path / "r", canaries=CANARIES, model_file=str(path))
    assert probe["status"] == "ok", probe["reason"]
    dp = probe["params"]["differential_privacy"]
    assert abs(dp["epsilon"] - 4.0) < 0.1 and dp["epsilon_target"] == 4.0 and dp["delta"] == 1e-5
    assert dp["accountant"] == "prv" and dp["max_grad_norm"] == 1.0 and dp["steps"] == record["steps"] > 0
    assert dp["noise_multiplier"] > 0.5 and 0 < dp["sample_rate"] < 1 and dp["secure_rng"] is None
    assert f"claims epsilon {record['epsilon']:.2f} at delta 1e-05" in probe["summary"]
    assert "prv accountant" in probe["summary"]
    m = probe["metrics"]
    assert abs(m["privacy_epsilon"] - 4.0) < 0.1
    assert 0.0 <= m["privacy_epsilon_lower_bound"] < m["privacy_epsilon"]
    assert 0.5 < m["privacy_test_accuracy"] <= 1.0
    audit = probe["artifacts"]["canary_audit"]
    assert audit["defense"] == "dp-sgd" and audit["violation"] is False
    assert audit["training"]["epochs"] == 10 and audit["training"]["batch_size"] == record["config"]["batch_size"]
    checks = _checks(probe)
    assert checks["empirical-epsilon-below-claim"]["status"] == "pass"
    assert checks["retrained-matches-model"]["status"] == "pass"
    assert probe["risk"] == "low"


def test_the_record_is_read_from_the_file_or_the_classifier_and_rebuilds_the_recipe(dp_model, digits_mlp):
    from safetensors import safe_open

    from bastion.defenses.privacy.dpsgd import dp_config_for

    path, record = dp_model
    meta = model_metadata(None, str(path))
    assert meta is not None and meta["bastion_defense"] == record["config"]
    model = load_model(path)
    with safe_open(str(path), "pt") as f:
        model.metadata = f.metadata()  # as a loader exposing the file's metadata would
    assert model_metadata(model) == meta
    assert dp_summary(meta)["epsilon"] == record["epsilon"]
    assert dp_config_from("digits-mlp", meta["bastion_defense"]) == dp_config_for("digits-mlp", epsilon=4.0, epochs=10)
    # a model without DP: no record on the zoo's classifier, a record without a defence in a trained file
    assert model_metadata(digits_mlp) is None and dp_summary(None) is None
    assert dp_summary({"bastion_defense": None, "bastion_record": {"epochs": []}}) is None


def test_models_bastion_cannot_retrain_are_skipped(tmp_path, digits_mlp, digits):
    from bastion.data import load_dataset

    unknown = TorchClassifier(digits_mlp.module, n_classes=10, input_shape=(1, 8, 8))  # no registered arch
    probe, _ = _audit(unknown, digits, tmp_path / "a", canaries=CANARIES)
    assert probe["status"] == "skipped" and "architecture is not known" in probe["reason"]
    probe, _ = _audit(load_zoo("cancer-gbt"), load_dataset("breast-cancer"), tmp_path / "b")
    assert probe["status"] == "skipped" and "architecture is not known" in probe["reason"]
    probe, _ = _audit(digits_mlp, digits, tmp_path / "c", arch="no-such-net")
    assert probe["status"] == "skipped" and "not registered" in probe["reason"]


def test_wiring_profiles_parameters_and_gates(tmp_path):
    assert "privacy" in PROBES and PROBES["privacy"] is PrivacyProbe
    assert "privacy" not in PROFILES["quick"].probes  # a training: kept out of quick
    assert PROFILES["standard"].probes["privacy"] == {"canaries": 500, "runs": 1}
    assert PROFILES["thorough"].probes["privacy"] == {"canaries": 1000, "runs": 2}
    names = list(PROFILES["standard"].probes)
    assert names.index("membership") < names.index("privacy") < names.index("inversion")
    for bad in ({"canaries": 1}, {"runs": 0}, {"kind": "poison"}, {"score": "vibes"}, {"confidence": 1.5}):
        with pytest.raises(UsageError, match="probe 'privacy'"):
            PrivacyProbe(**bad)
    with pytest.raises(UsageError, match="not a file"):
        PrivacyProbe(model_file=str(tmp_path / "missing.safetensors"))
    with pytest.raises(UsageError, match="unknown parameters"):
        PrivacyProbe(shadows=3)
    with pytest.raises(UsageError, match="lira"):
        PrivacyProbe(references=3)  # references are for the lira score only
    assert PrivacyProbe(score="lira", references=3).params["references"] == 3
    assert parse_gate("privacy_epsilon_lower_bound<=1").metric == "privacy_epsilon_lower_bound"
    assert parse_gate("privacy_canary_tpr@fpr=0.001<=0.05").metric == "privacy_canary_tpr@fpr=0.001"
    assert parse_gate("privacy_epsilon<=8").metric == "privacy_epsilon"


def test_the_cli_runs_the_probe_in_the_standard_profile(tmp_path):
    bastion = str(Path(sys.executable).parent / "bastion")
    args = ["--model", "zoo:digits-mlp", "--data", "digits", "--n", "50", "--profile", "standard"]
    args += ["--probes", "privacy", "--out", str(tmp_path / "r"), "--json"]
    args += ["--fail-under", "privacy_epsilon_lower_bound>=0.1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([bastion, "audit", *args], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    (probe,) = out["probes"]
    assert probe["probe"] == "privacy" and probe["status"] == "ok"
    assert out["gates"][0]["passed"] and out["metrics"]["privacy_epsilon_lower_bound"] > 0.1
