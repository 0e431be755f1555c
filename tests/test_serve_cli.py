"""`bastion keys` and `bastion serve` as a user runs them: a real process on a loopback port; the settings file
(`--print-config`, docs/guard.toml), the checks made before the slow calibration (port, --model), and the start-up
log and /health of a model without features (ONNX)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from bastion.serve.config import GuardConfig, load_config, render_config
from serve_helpers import free_port

BASTION = str(Path(sys.executable).parent / "bastion")
ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([BASTION, *args], capture_output=True, text=True, timeout=300, env=env)


def test_keys_create_list_revoke(tmp_path):
    db = f"sqlite:///{tmp_path / 'k.db'}"
    created = run("keys", "create", "--role", "admin", "--label", "ops", "--db", db)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("bst_") and len(created.stdout.splitlines()) == 1  # the key alone on stdout
    listed = json.loads(run("keys", "list", "--db", db, "--json").stdout)["keys"]
    assert [(k["role"], k["label"], k["revoked_at"]) for k in listed] == [("admin", "ops", None)]
    assert key not in json.dumps(listed)
    assert run("keys", "revoke", listed[0]["id"], "--db", db).returncode == 0
    again = run("keys", "revoke", listed[0]["id"], "--db", db)
    assert again.returncode == 2 and "no active key" in again.stderr
    bad = run("keys", "create", "--role", "root", "--db", db)
    assert bad.returncode == 2 and "client or admin" in bad.stderr and "Traceback" not in bad.stderr


def test_keys_commands_take_json(tmp_path):
    db = f"sqlite:///{tmp_path / 'k.db'}"
    created = run("keys", "create", "--role", "client", "--label", "web", "--db", db, "--json")
    assert created.returncode == 0, created.stderr
    made = json.loads(created.stdout)
    assert set(made) == {"key", "id", "role", "label"} and made["key"].startswith(f"bst_{made['id']}_")
    assert (made["role"], made["label"]) == ("client", "web")
    listed = json.loads(run("keys", "list", "--db", db, "--json").stdout)["keys"]
    assert [k["id"] for k in listed] == [made["id"]]
    revoked = run("keys", "revoke", made["key"], "--db", db, "--json")  # the whole key is accepted too
    assert revoked.returncode == 0 and json.loads(revoked.stdout) == {"revoked": made["id"]}, revoked.stderr
    assert json.loads(run("keys", "list", "--db", db, "--json").stdout)["keys"][0]["revoked_at"] is not None


@pytest.mark.parametrize("command", [("list",), ("revoke", "0123456789ab")])
def test_keys_list_and_revoke_refuse_a_database_that_does_not_exist(tmp_path, command):
    missing = tmp_path / "typo" / "serve.db"
    r = run("keys", *command, "--db", f"sqlite:///{missing}", "--json")
    assert r.returncode == 2 and r.stderr.startswith("error: no database at ") and str(missing) in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr and r.stdout == ""
    assert not missing.exists() and not missing.parent.exists()  # nothing was created


def test_print_config_needs_no_model_and_docs_guard_toml_is_its_output():
    printed = run("serve", "--print-config")
    assert printed.returncode == 0 and printed.stderr == "", printed.stderr
    assert printed.stdout == render_config()
    shipped = ROOT / "docs" / "guard.toml"
    assert shipped.read_text(encoding="utf-8") == render_config(), "regenerate: bastion serve --print-config"
    assert load_config(shipped) == GuardConfig()  # every key present, every value the default
    for section, fields in GuardConfig.model_fields.items():
        assert f"[{section}]" in printed.stdout, section
        for key in fields.annotation.model_fields:
            assert f"\n{key} = " in printed.stdout, (section, key)


def test_serve_help_names_the_sections_and_serve_needs_a_model():
    helped = run("serve", "--help", env={**os.environ, "COLUMNS": "250"})
    text = " ".join(helped.stdout.split())
    assert helped.returncode == 0 and "see docs: , ," not in text, text
    assert "confidence, ood, backdoor, drift, extraction and limits" in text and "--print-config" in text, text
    missing = run("serve")
    assert missing.returncode == 2 and missing.stderr.startswith("error: --model is needed"), missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_bad_or_busy_port_is_refused_before_the_calibration(tmp_path):
    env = {**os.environ, "BASTION_HOME": os.environ.get("BASTION_HOME", str(tmp_path))}
    db = f"sqlite:///{tmp_path / 'p.db'}"
    args = ("serve", "--model", "zoo:mnist-cnn", "--reference", "mnist5k", "--db", db)
    out_of_range = run(*args, "--port", "70000", env=env)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        in_use = run(*args, "--port", str(port), env=env)
    assert out_of_range.returncode == 2, out_of_range.stderr
    assert out_of_range.stderr == "error: --port must be in [1, 65535], got 70000\n", out_of_range.stderr
    assert in_use.returncode == 2, in_use.stderr
    assert in_use.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: Address already in use"), in_use.stderr
    for r in (out_of_range, in_use):  # one line, and nothing was loaded or calibrated first
        assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
        assert "guard calibrated" not in r.stderr and r.stdout == ""
    assert not (tmp_path / "p.db").exists()  # refused before the database was opened


def _serve(*args: str, env: dict) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [BASTION, "serve", *args, "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, port


def _wait_healthy(proc: subprocess.Popen, port: int, timeout: float = 120) -> dict:
    """Poll /health until it answers (the process calibrates the guard first)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "bastion serve did not come up"
        time.sleep(0.3)


def _stop(proc: subprocess.Popen) -> tuple[str, str]:
    """Stop the server; its stdout and stderr."""
    proc.terminate()
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err[-2000:]
    return out, err


@pytest.mark.slow
def test_serve_answers_and_refuses_bad_settings(tmp_path, mnist):
    env = {**os.environ, "BASTION_HOME": os.environ.get("BASTION_HOME", str(tmp_path))}
    db = f"sqlite:///{tmp_path / 's.db'}"
    key = run("keys", "create", "--db", db, env=env).stdout.strip()
    bad = run("serve", "--model", "zoo:mnist-cnn", "--db", db, "--config", str(tmp_path / "missing.toml"), env=env)
    assert bad.returncode == 2 and "no such file" in bad.stderr and "Traceback" not in bad.stderr
    cfg = tmp_path / "guard.toml"
    cfg.write_text('[ood]\naction = "explode"\n')
    bad = run("serve", "--model", "zoo:mnist-cnn", "--db", db, "--config", str(cfg), env=env)
    assert bad.returncode == 2 and "[ood] action" in bad.stderr
    cfg.write_text("[confidence]\ntarget_risk = 0.01\n[limits]\nmax_batch = 8\n")
    args = ("--model", "zoo:mnist-cnn", "--reference", "mnist5k", "--db", db, "--config", str(cfg))
    proc, port = _serve(*args, env=env)
    try:
        health = _wait_healthy(proc, port)
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/predict",
            json={"inputs": mnist.x_test[:3].tolist()},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert r.status_code == 200 and len(r.json()["results"]) == 3
        spec = httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=10).json()
        assert "/v1/predict" in spec["paths"] and "/dashboard" in spec["paths"]
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/predict",
            json={"inputs": mnist.x_test[:9].tolist()},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert r.status_code == 413  # the config's batch limit applies
    finally:
        _, err = _stop(proc)
    assert health["ood_signal"] is True
    # the start-up log says which detector runs
    assert "OOD detector activations: on: ActivationDetector, flag above the clean 0.05-fpr threshold" in err, err
    assert "warning: the OOD signal is off" not in err and f"serving on http://127.0.0.1:{port}" in err, err


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.onnx.export(dynamo=False), as in test_loading
def test_a_model_without_features_serves_with_the_ood_signal_off_and_says_so(tmp_path, mnist_cnn):
    env = {**os.environ, "BASTION_HOME": os.environ.get("BASTION_HOME", str(tmp_path))}
    path = tmp_path / "mnist-cnn.onnx"
    torch.onnx.export(
        mnist_cnn.module.eval(),
        (torch.zeros(2, 1, 28, 28),),
        str(path),
        dynamo=False,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
    )
    db = f"sqlite:///{tmp_path / 'o.db'}"
    proc, port = _serve("--model", str(path), "--reference", "mnist5k", "--db", db, "--json", env=env)
    try:
        health = _wait_healthy(proc, port)
    finally:
        out, err = _stop(proc)
    off = "off: the model declares no features (ONNX/black-box), so no detector can read them"
    assert health["ood_signal"] is False and health["signals"]["ood"] == off, health
    assert health["signals"]["drift"] == "ks on raw inputs", health
    warning = [line for line in err.splitlines() if line.startswith("warning: the OOD signal is off")]
    assert warning == [f"warning: the OOD signal is {off}; drift runs on raw inputs (ks on raw inputs)"], err
    assert "OOD detector" not in err
    record = json.loads(out)  # --json: the start-up record on stdout
    assert record["ood_signal"] is False and record["detector"] is None and record["signals"] == health["signals"]
    assert record["url"] == f"http://127.0.0.1:{port}" and record["reference"] == "mnist5k"
