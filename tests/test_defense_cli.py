"""`bastion sanitize` and `bastion scan` end to end on real poisoned models: the BadNets mnist-cnn fixture (its
poisoned data written as `bastion poison` writes it) and a BadNets digits-mlp; bad input is one line, exit 2,
nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bastion.data import load_dataset
from bastion.models.saving import save_model

BASTION = str(Path(sys.executable).parent / "bastion")


def bastion(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BASTION, *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def poisoned_files(badnets_mnist, tmp_path_factory):
    poisoned, model = badnets_mnist
    folder = tmp_path_factory.mktemp("sanitize")
    data_path, _ = poisoned.save(folder / "p.npz")
    save_model(model, folder / "m.safetensors", arch="mnist-cnn")
    return poisoned, folder, str(data_path), str(folder / "m.safetensors")


def test_sanitize_removes_the_recorded_poison_and_writes_the_rest(poisoned_files):
    poisoned, folder, data, model = poisoned_files
    out = folder / "kept.npz"
    r = bastion("sanitize", "--model", model, "--data", data, "--method", "clustering", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["recall"] >= 0.9 and report["removed_clean_rate"] <= 0.05, report  # issue 13's bound
    kept = load_dataset(str(out))
    assert kept.x_train.shape[0] == poisoned.data.x_train.shape[0] - report["n_removed"]
    assert torch.equal(kept.x_test, poisoned.data.x_test)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "spectral", "--reclassify", "mnist-cnn"], "--reclassify is a step of --method clustering"),
        (["--method", "clustering", "--reclassify", "resnet"], "unknown architecture 'resnet'"),
        (["--method", "pca"], "unknown sanitizer"),
        (["--method", "spectral", "--expected-rate", "1.5"], "expected_rate"),
    ],
)
def test_sanitize_bad_input_is_one_line_exit_2_and_writes_nothing(poisoned_files, extra, message):
    _, folder, data, model = poisoned_files
    out = folder / "never.npz"
    r = bastion("sanitize", "--model", model, "--data", data, "--out", str(out), *extra)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()


def test_sanitize_refuses_a_model_that_does_not_fit_the_data(poisoned_files, tmp_path):
    _, _, data, _ = poisoned_files
    out = tmp_path / "kept.npz"
    r = bastion("sanitize", "--model", "zoo:digits-mlp", "--data", data, "--method", "spectral", "--out", str(out))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "shape" in r.stderr, r.stderr
    assert not out.exists()


@pytest.mark.slow
def test_scan_finds_a_small_trigger_for_the_backdoor_target(poisoned_files):
    """Two classes of the BadNets mnist-cnn (target 0, and 3) on 200 clean inputs: the target's reversed trigger is
    a fraction of the other's (the full 10-class scans and their anomaly index are in test_neural_cleanse)."""
    _, folder, _, model = poisoned_files
    out = folder / "triggers"
    r = bastion("scan", "--model", model, "--data", "mnist5k", "--n", "200", "--classes", "0,3", "--steps", "40",
                "--out", str(out), "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["classes"] == [0, 3] and min(report["trigger_asr"]) >= 0.9, report
    assert report["norms"][0] < report["norms"][1] / 3, report
    assert sorted(p.name for p in out.glob("*.png"))[:1] and report["n_inputs"] == 200
    bad = bastion("scan", "--model", model, "--data", "mnist5k", "--classes", "0,12", "--out", str(folder / "no"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert not (folder / "no").exists()
