"""``bastion poison`` end to end (a real subprocess) and the audit's ``poisoning`` probe, on digits + digits-mlp
(trains in seconds): the written data is the poisoned data, the measured backdoor is real, bad input writes
nothing and exits 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bastion.attacks.poisoning import BadNets
from bastion.audit import run_audit
from bastion.audit.gates import parse_gate
from bastion.audit.profiles import Profile
from bastion.data import load_dataset
from bastion.errors import UsageError

BASTION = str(Path(sys.executable).parent / "bastion")


def bastion(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([BASTION, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_poison_writes_the_poisoned_data_and_its_record(tmp_path):
    out = tmp_path / "p.npz"
    r = bastion(
        "poison",
        "--data",
        "digits",
        "--attack",
        "badnets",
        "--rate",
        "0.1",
        "--target",
        "3",
        "--out",
        str(out),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    record = json.loads((tmp_path / "p.json").read_text())
    ds = load_dataset(str(out))
    clean = load_dataset("digits")
    expected = BadNets(rate=0.1, target=3).poison(clean)
    # the file holds exactly what the library poisons, and the record says exactly which records changed
    assert torch.equal(ds.x_train, expected.data.x_train) and torch.equal(ds.y_train, expected.data.y_train)
    assert torch.equal(ds.x_test, clean.x_test) and ds.bounds == clean.bounds
    changed = torch.nonzero((ds.x_train != clean.x_train).flatten(1).any(1) | (ds.y_train != clean.y_train)).flatten()
    assert record["indices"] == changed.tolist()
    assert res["n_poisoned"] == len(record["indices"]) == round(0.1 * clean.x_train.shape[0])
    assert set(record["poisoned_labels"]) == {3} and 3 not in record["original_labels"]
    assert np.load(out)["poisoned"].sum() == res["n_poisoned"]


def test_poison_trains_the_recipe_and_measures_a_real_backdoor(tmp_path):
    out, model = tmp_path / "p.npz", tmp_path / "m.safetensors"
    r = bastion(
        "poison",
        "--data",
        "digits",
        "--attack",
        "badnets",
        "--rate",
        "0.1",
        "--target",
        "0",
        "--out",
        str(out),
        "--train-arch",
        "digits-mlp",
        "--model-out",
        str(model),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert {"attack_success_rate", "clean_accuracy", "clean_model_accuracy", "n_inputs"} <= set(res)
    # the backdoor fires on the poisoned model and not on the clean recipe, at no real cost in clean accuracy
    assert res["attack_success_rate"] >= 0.9
    assert res["clean_model_attack_success_rate"] <= 0.1
    assert abs(res["clean_accuracy"] - res["clean_model_accuracy"]) <= 0.03
    from bastion.models import load_model

    clf = load_model(str(model))  # the written model is the backdoored one
    digits = load_dataset("digits")
    x = digits.x_test[digits.y_test != 0]
    stamped = BadNets(rate=0.1).build_trigger(digits).apply(x)
    with torch.no_grad():
        assert float((clf.predict(stamped) == 0).double().mean()) >= 0.9
        assert float((clf.predict(x) == 0).double().mean()) <= 0.05


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "1.5"], "strictly between 0 and 1"),
        (["--rate", "0"], "strictly between 0 and 1"),
        (["--target", "10"], "class index in \\[0, 9\\]"),
        (["--size", "9"], "larger than the 8x8 input"),
        (["--alpha", "0.3"], "badnets does not take --alpha"),
        (["--attack", "badnet"], "did you mean 'badnets'"),
        (["--model-out", "m.safetensors"], "--model-out needs --train-arch"),
        (["--train-arch", "nope"], "unknown architecture 'nope'"),
        (["--location", "middle"], "trigger location must be one of"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    import re

    base = {"--data": "digits", "--attack": "badnets", "--out": "p.npz"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    r = bastion("poison", *[t for kv in base.items() for t in kv], cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert re.search(message, r.stderr) and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_missing_output_folder_is_refused_before_the_work(tmp_path):
    r = bastion("poison", "--data", "digits", "--attack", "badnets", "--out", str(tmp_path / "no" / "p.npz"))
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_rate_gates_parse_and_read_the_probe_metrics():
    g = parse_gate("attack_success_rate[badnets]@rate=0.050<=0.2")
    assert g.metric == "attack_success_rate[badnets]@rate=0.05"
    assert g.evaluate({"attack_success_rate[badnets]@rate=0.05": 0.9})["passed"] is False
    with pytest.raises(UsageError, match="unknown metric"):
        parse_gate("attack_succes_rate@rate=0.05<=0.2")


def test_poisoning_probe_measures_the_backdoor_curve(tmp_path, digits, digits_mlp):
    prof = Profile("t", "t", 100, {"poisoning": {"attacks": {"badnets": [0.002, 0.1]}, "epochs": 20}})
    torch.set_num_threads(2)
    report = run_audit(
        digits_mlp, digits, tmp_path / "r", profile=prof, gates=["attack_success_rate[badnets]@rate=0.1<=0.5"]
    )
    (p,) = report["probes"]
    assert p["status"] == "ok", p.get("reason")
    m = p["metrics"]
    # more poison, a stronger backdoor; at 10% it fires on most triggered inputs, the clean recipe on almost none
    assert m["attack_success_rate[badnets]@rate=0.1"] >= 0.8
    assert m["attack_success_rate[badnets]@rate=0.1"] > m["attack_success_rate[badnets]@rate=0.002"] + 0.3
    assert m["clean_model_attack_success_rate[badnets]@rate=0.1"] <= 0.1
    assert p["risk"] == "high" and report["verdict"]["gates"] == "fail"
    assert {c["id"]: c["status"] for c in p["checks"]} == {
        "poisoned-recipe-trains": "pass",
        "trigger-needs-poison": "pass",
    }
    assert p["examples"] and p["plots"][0]["id"] == "poisoning-asr"
    assert "Backdoor success against the poison rate" in (tmp_path / "r" / "index.html").read_text()


def test_poisoning_probe_skips_a_model_it_cannot_retrain(tmp_path, digits):
    from bastion.models import TorchClassifier

    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    clf = TorchClassifier(module, bounds=(0.0, 1.0), n_classes=10, input_shape=(1, 8, 8))
    report = run_audit(clf, digits, tmp_path / "r", profile=Profile("t", "t", 50, {"poisoning": {}}))
    (p,) = report["probes"]
    assert p["status"] == "skipped" and "register_architecture" in p["reason"]
    with pytest.raises(UsageError, match="unknown poisoning attack"):
        run_audit(clf, digits, tmp_path / "r2", profile=Profile("t", "t", 50, {"poisoning": {"attacks": {"x": [0.1]}}}))
