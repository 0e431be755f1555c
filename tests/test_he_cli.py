"""``bastion he bench / inspect / convert`` and ``bastion train --he-friendly``, run as a user runs them: the real
``bastion`` executable on real trained models and real TenSEAL ciphertexts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tenseal", reason="the he extra (TenSEAL) is installed by the test extra, so CI runs these")

BASTION = str(Path(sys.executable).parent / "bastion")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([BASTION, *args], capture_output=True, text=True, timeout=timeout, env=ENV)


def one_line_error(p: subprocess.CompletedProcess, needle: str) -> None:
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert needle in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_bench_logreg_agrees_with_the_plaintext_model_and_beats_one_sample_per_ciphertext():
    p = run("he", "bench", "--model", "zoo:digits-logreg", "--data", "digits", "--naive", "3", "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["n"] == 360 and r["agreement"] >= 0.995  # the whole digits test split in one ciphertext batch
    assert r["max_abs_error"] < 0.05 and r["encrypted_accuracy"] == pytest.approx(r["plain_accuracy"], abs=0.005)
    assert r["naive_n"] == 3 and r["naive_agreement"] == 1.0 and r["naive_max_abs_error"] < 1e-3
    assert r["speedup"] > 1 and r["seconds_per_sample"] == pytest.approx(r["seconds_per_batch"] / 360)
    assert r["params"]["poly_modulus_degree"] == 4096 and r["security_bits"] == 128 and r["depth"] == 1
    assert r["request_bytes"] == r["payload_bytes"] + r["context_bytes"] > r["reply_bytes"] > 0


def test_inspect_refuses_a_relu_model_naming_the_layer_and_the_alternatives():
    p = run("he", "inspect", "--model", "zoo:digits-mlp")
    one_line_error(p, "layer 2 (ReLU) cannot be evaluated on CKKS ciphertexts")
    assert "bastion train --arch digits-mlp --he-friendly" in p.stderr and "bastion he convert" in p.stderr


def test_train_he_friendly_saves_a_file_that_loads_and_compiles_in_another_process(tmp_path):
    out = tmp_path / "m.safetensors"
    p = run("train", "--arch", "digits-mlp", "--data", "digits", "--he-friendly", "--epochs", "5", "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert "digits-mlp-he" in p.stdout and "depth 5" in p.stdout
    p = run("he", "inspect", "--model", str(out), "--json")  # a new process resolves the stored arch name
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["arch"] == "digits-mlp-he" and info["depth"] == 5 and info["steps"][1] == "square"
    assert info["params"]["poly_modulus_degree"] == 8192 and info["security_bits"] == 128
    assert info["params"]["total_bits"] <= info["params"]["max_bits_128"]


def test_train_he_friendly_on_a_friendly_architecture_keeps_its_name_and_records_he(tmp_path):
    out = tmp_path / "h.safetensors"
    p = run("train", "--arch", "digits-he-mlp", "--data", "digits", "--he-friendly", "--out", str(out), "--json")
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["arch"] == "digits-he-mlp" and rec["test_accuracy"] > 0.93
    he = rec["he"]
    assert he["depth"] == 3 and he["plaintext_multiplications"] == 64 * 32 + 32 * 10
    assert he["params"]["coeff_mod_bit_sizes"][1:-1] == [he["params"]["scale_bits"]] * 3


def test_convert_reports_accuracy_before_after_the_swap_and_after_fine_tuning(tmp_path):
    out = tmp_path / "c.safetensors"
    p = run(
        "he", "convert", "--model", "zoo:digits-mlp", "--data", "digits", "--out", str(out), "--epochs", "2", "--json"
    )
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["arch"] == "digits-mlp-he" and rec["from_arch"] == "digits-mlp" and len(rec["history"]) == 2
    assert rec["replaced"] == ["2: ReLU -> PolyAct", "4: ReLU -> PolyAct"] and out.exists()
    assert rec["accuracy_before"] > 0.95 and rec["accuracy_after"] > 0.93  # PolyAct costs about a point on digits
    assert 0.5 < rec["accuracy_swapped"] <= 1.0
    assert rec["accuracy_change"] == pytest.approx(rec["accuracy_after"] - rec["accuracy_before"])
    assert rec["he"]["depth"] == 5


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["bench", "--model", "zoo:digits-logreg", "--data", "digits", "--n", "0"], "--n must be >= 1"),
        (["bench", "--model", "zoo:digits-logreg", "--data", "digits", "--naive", "-1"], "--naive must be >= 0"),
        (["bench", "--model", "zoo:digits-logreg", "--data", "mnist5k"], "the model takes (1, 8, 8)"),
        (["inspect", "--model", "zoo:cancer-gbt"], "encrypted inference compiles a torch network"),
        (["convert", "--model", "zoo:digits-mlp", "--data", "digits", "--out", "x.pt"], "must end with .safetensors"),
        (
            ["convert", "--model", "zoo:digits-mlp", "--data", "digits", "--out", "x.safetensors", "--epochs", "0"],
            "--epochs must be >= 1",
        ),
    ],
)
def test_bad_options_exit_2_with_one_line(args, needle, capsys):
    from bastion.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["he", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err
