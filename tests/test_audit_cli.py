"""`bastion audit` from the command line: exit codes, --json, gates, bad input, Ctrl-C and resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BASTION = str(Path(sys.executable).parent / "bastion")
OUTPUTS = {"report.json", "index.html", "junit.xml"}


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([BASTION, "audit", *args], capture_output=True, text=True, timeout=timeout)


def test_json_output_and_gates_decide_the_exit_code(tmp_path):
    base = ["--model", "zoo:digits-mlp", "--data", "digits", "--n", "100", "--probes", "model,whitebox", "--json"]
    p = run(
        *base,
        "--out",
        str(tmp_path / "ok"),
        "--fail-under",
        "clean_accuracy>=0.5",
        "--fail-under",
        "robust_accuracy@eps=0.3<=0.05",
    )
    assert p.returncode == 0, p.stderr
    lines = [line for line in p.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert {"verdict", "metrics", "gates", "probes", "checks", "out", "n_inputs"} <= set(out)
    assert out["n_inputs"] == 100
    assert [g["passed"] for g in out["gates"]] == [True, True] and out["verdict"]["gates"] == "pass"
    assert OUTPUTS <= {f.name for f in (tmp_path / "ok").iterdir()}

    p = run(*base, "--out", str(tmp_path / "gated"), "--fail-under", "robust_accuracy@eps=0.1>=0.9")
    assert p.returncode == 1, p.stderr
    out = json.loads(p.stdout)
    assert out["verdict"]["gates"] == "fail" and out["gates"][0]["value"] < 0.9
    junit = (tmp_path / "gated" / "junit.xml").read_text()
    assert "<failure" in junit and "robust_accuracy@eps=0.1&gt;=0.9" in junit


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--model", "BAD_FILE"], "not a readable safetensors file"),
        (["--data", "digits"], "shape"),
        (["--profile", "turbo"], "unknown profile"),
        (["--fail-under", "robustness>0.5"], "unknown metric"),
        (["--fail-under", "robust_accuracy@eps=0.15>=0.5"], "not audited"),
        (["--out", "FILE"], "not a directory"),
        (["--out", "/no/such/dir/out"], "--out /no/such/dir/out: the folder /no/such/dir does not exist"),
        (["--model", "TS_FILE"], "--input-shape"),
        (["--detector", "squeeze", "--smooth", "0.25"], "do not combine"),
        (["--detector", "nope"], "unknown detector"),
        (["--eps", "0.1,-2"], "--eps"),
        (["--norm", "l1"], "linf and l2"),
        (["--probes", "whitebox,fuzzing"], "unknown probe"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_no_report(tmp_path, torchscript_cnn, args, needle):
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    afile = tmp_path / "a-file"
    afile.write_text("x")
    out = tmp_path / "out"
    argv = {"--model": "zoo:mnist-cnn", "--data": "mnist5k", "--out": str(out), "--n": "20"}
    for i in range(0, len(args), 2):
        value = args[i + 1].replace("BAD_FILE", str(bad)).replace("TS_FILE", str(torchscript_cnn))
        argv[args[i]] = value.replace("FILE", str(afile))
    p = run(*[t for kv in argv.items() for t in kv])
    assert p.returncode == 2, (p.stdout, p.stderr)
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in p.stderr, p.stderr
    assert not any((out / name).exists() for name in OUTPUTS)


@pytest.fixture(scope="module")
def torchscript_cnn(tmp_path_factory):
    """zoo:mnist-cnn saved as TorchScript: a file that records neither its input shape nor its classes."""
    import torch

    from bastion.models.zoo import load_zoo

    path = tmp_path_factory.mktemp("ts") / "cnn.pt"
    torch.jit.save(torch.jit.trace(load_zoo("mnist-cnn").module.eval(), torch.zeros(1, 1, 28, 28)), str(path))
    return path


def test_a_torchscript_model_is_audited_with_input_shape(tmp_path, torchscript_cnn):
    p = run(
        *("--model", str(torchscript_cnn), "--input-shape", "1,28,28", "--data", "mnist5k"),
        *("--out", str(tmp_path / "ts"), "--probes", "model", "--n", "50", "--json"),
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["n_inputs"] == 50 and out["metrics"]["clean_accuracy"] > 0.9


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tmp_path):
    out = tmp_path / "run"
    argv = [
        BASTION,
        "audit",
        "--model",
        "zoo:mnist-cnn",
        "--data",
        "mnist5k",
        "--out",
        str(out),
        "--n",
        "100",
        "--probes",
        "model,whitebox,noise",
    ]
    # a terminal's Ctrl-C: SIGINT at its default disposition in the child, even when this test runs in a
    # background job (where the shell hands SIGINT down ignored, and Python then never raises KeyboardInterrupt)
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509 - no threads yet
    )
    saved = out / ".audit-state" / "probe-model.json"
    deadline = time.time() + 120
    while not saved.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert saved.exists(), proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "run the same command to resume" in err and "Traceback" not in err
    assert not any((out / name).exists() for name in OUTPUTS)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    assert "model" in p.stderr and "resumed" in p.stderr.splitlines()[0]
    assert OUTPUTS <= {f.name for f in out.iterdir()}
    report = json.loads((out / "report.json").read_text())
    assert report["resumed"] is True
    # the resumed report counts the probe that ran before the interruption: not just this run's seconds
    model_seconds = next(p["seconds"] for p in report["probes"] if p["probe"] == "model")
    assert report["seconds"] >= sum(p["seconds"] for p in report["probes"]) > 0
    assert report["seconds"] - report["seconds_this_run"] == pytest.approx(model_seconds, abs=2e-3)
