"""`bastion keys` and `bastion serve` as a user runs them: a real process on a loopback port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from serve_helpers import free_port

BASTION = str(Path(sys.executable).parent / "bastion")


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


def test_serve_answers_and_refuses_bad_settings(tmp_path, mnist):
    env = {**os.environ, "BASTION_HOME": os.environ.get("BASTION_HOME", str(tmp_path))}
    db = f"sqlite:///{tmp_path / 's.db'}"
    key = run("keys", "create", "--db", db, env=env).stdout.strip()
    bad = run("serve", "--model", "zoo:mnist-cnn", "--db", db, "--config", str(tmp_path / "missing.toml"), env=env)
    assert bad.returncode == 2 and "no such file" in bad.stderr and "Traceback" not in bad.stderr
    cfg = tmp_path / "guard.toml"
    cfg.write_text('[ood]\naction = "explode"\n')
    bad = run("serve", "--model", "zoo:mnist-cnn", "--db", db, "--config", str(cfg), env=env)
    assert bad.returncode == 2 and "ood.action" in bad.stderr
    cfg.write_text("[confidence]\ntarget_risk = 0.01\n[limits]\nmax_batch = 8\n")
    port = free_port()
    proc = subprocess.Popen(
        [
            BASTION,
            "serve",
            "--model",
            "zoo:mnist-cnn",
            "--reference",
            "mnist5k",
            "--db",
            db,
            "--config",
            str(cfg),
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "bastion serve did not come up"
            time.sleep(0.3)
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
        proc.terminate()
        _out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err[-2000:]
