"""``bastion steal`` end to end (a real subprocess): the JSON report, a copy that other commands load, and bad
input that exits 2 with one line naming what works with what the victim exposes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bastion.cli import main
from bastion.data import load_dataset
from bastion.models import load_model
from bastion.models.zoo import load_zoo
from blackbox_helpers import digits_endpoint

BASTION = str(Path(sys.executable).parent / "bastion")
KEYS = {"attack", "budget", "queries", "fidelity", "accuracy", "victim_accuracy", "seconds", "curve", "out"}


def bastion(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: one thread is faster (as in test_extraction)
    return subprocess.run([BASTION, *args], capture_output=True, text=True, timeout=300, env=env)


def test_steal_equation_solving_reports_and_saves_an_exact_copy(tmp_path):
    out = tmp_path / "copy.safetensors"
    r = bastion(*"steal -m zoo:digits-logreg -d digits -a equation-solving -b 100 --json -o".split(), str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert KEYS <= set(res) and res["queries"] == 65 and res["fidelity"] == 1.0
    assert res["accuracy"] == res["victim_accuracy"] > 0.95 and res["copy_arch"] == "digits-logreg"
    copy, victim, digits = load_model(str(out)), load_zoo("digits-logreg"), load_dataset("digits")
    assert torch.equal(copy.predict(digits.x_test), victim.predict(digits.x_test))
    r = bastion(
        "attack", "--model", str(out), "--data", "digits", "--attack", "fgsm", "--eps", "0.1", "--n", "20", "--json"
    )
    assert r.returncode == 0, r.stderr  # the copy is a model like any other


def test_steal_knockoff_curve_and_labels_only(tmp_path):
    out = tmp_path / "k.safetensors"
    args = ["steal", "-m", "zoo:digits-mlp", "-d", "digits", "-a", "knockoff", "-b", "300", "-o", str(out), "--json"]
    r = bastion(*args, "--checkpoints", "100,200", "--labels-only")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert [p["queries"] for p in res["curve"]] == [100, 200, 300] and res["queries"] == 300
    assert res["fidelity"] > 0.8 and res["curve"][0]["fidelity"] < res["fidelity"] - 0.1  # measured 0.63 -> 0.91
    assert load_model(str(out)).arch == "digits-mlp"


def test_steal_bad_input_exits_2_with_one_line(tmp_path, capsys):
    # in-process through the entry point (bastion.cli.main), which is what the console script runs: six cases
    # as subprocesses would spend half a minute importing torch
    out = str(tmp_path / "c.safetensors")
    base = ["steal", "-m", "zoo:digits-logreg", "-d", "digits", "-o", out]
    cases = [
        ([*base, "-a", "equation-solving", "-b", "10"], "equation-solving needs at least 65 queries"),
        ([*base, "-a", "knockoff", "-b", "100", "--surrogate-data", "mnist5k"], "has inputs of shape (1, 28, 28)"),
        ([*base, "-a", "equation-solving", "-b", "100", "--labels-only"], "use --attack knockoff --labels-only"),
        ([*base, "-a", "knockoff", "-b", "5000"], "exceeds the pool's 1437 inputs"),
        ([*base, "-a", "knockof", "-b", "100"], "did you mean 'knockoff'"),
        (
            ["steal", "-m", "zoo:digits-mlp", "-d", "digits", "-a", "equation-solving", "-b", "100", "-o", "c.pt"],
            ".safetensors",
        ),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_:
            main(args)
        err = capsys.readouterr().err
        assert exit_.value.code == 2, (args, err)
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not Path(out).exists()


def test_steal_refuses_equation_solving_on_a_label_only_api(tmp_path):
    with digits_endpoint(labels_only=True) as (httpd, _):
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        opts = "--input-shape 1,8,8 --n-classes 10 -d digits -a equation-solving -b 100 -o".split()
        r = bastion("steal", "-m", url, *opts, str(tmp_path / "c.safetensors"))
    assert r.returncode == 2
    assert "answers with labels only" in r.stderr and "--attack knockoff --labels-only" in r.stderr
