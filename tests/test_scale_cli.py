"""`--workers` / `--ray` on the commands (issue 19): the same JSON with a local Ray as without, one-line errors for
bad settings, and `bastion certify`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import ray  # noqa: F401 - bastion[test] brings the ray extra: a missing Ray fails here, never skips

BASTION = str(Path(sys.executable).parent / "bastion")
CERTIFY = ["certify", "--model", "zoo:digits-mlp", "--data", "digits", "--sigma", "0.25", "--count", "12"]
CERTIFY += ["--n0", "20", "--n", "300", "--radii", "0,0.1,0.25"]


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([BASTION, *args], capture_output=True, text=True, timeout=timeout)


def one_line_error(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return lines[0]


def test_certify_json_rows_and_a_local_ray_give_the_same_certificates(tmp_path):
    plain = run(*CERTIFY, "--json", "--out", str(tmp_path / "rows.tsv"))
    assert plain.returncode == 0, plain.stderr
    rec = json.loads(plain.stdout)
    assert rec["n_inputs"] == 12 and rec["scale"] == {"backend": "serial", "workers": 1, "shards": 3}
    acc = rec["certified_accuracy"]
    assert set(acc) == {"0", "0.1", "0.25"} and 1.0 >= acc["0"] >= acc["0.1"] >= acc["0.25"] >= 0.0
    assert acc["0"] >= 0.5  # digits-mlp keeps most of the digits under sigma 0.25 noise
    rows = (tmp_path / "rows.tsv").read_text().splitlines()
    assert rows[0] == "idx\tlabel\tpredict\tradius\tcorrect" and len(rows) == 13
    sharded = run(*CERTIFY, "--json", "--workers", "2", "--out", str(tmp_path / "rows2.tsv"))
    assert sharded.returncode == 0, sharded.stderr
    rec2 = json.loads(sharded.stdout)  # stdout is exactly the JSON object, Ray or not
    assert rec2["scale"]["backend"] == "ray" and rec2["scale"]["workers"] == 2
    assert rec2["certified_accuracy"] == acc and rec2["abstention_rate"] == rec["abstention_rate"]
    assert (tmp_path / "rows2.tsv").read_text() == (tmp_path / "rows.tsv").read_text()


def test_attack_with_workers_prints_the_same_numbers():
    args = ["attack", "--model", "zoo:digits-mlp", "--data", "digits", "--attack", "pgd", "--eps", "0.1", "--n", "120"]
    args += ["--batch-size", "50", "--json"]
    plain, sharded = run(*args), run(*args, "--workers", "2")
    assert plain.returncode == 0 and sharded.returncode == 0, sharded.stderr
    a, b = json.loads(plain.stdout), json.loads(sharded.stdout)
    a.pop("seconds"), b.pop("seconds")
    assert a == b and a["n_inputs"] == 120


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--workers", "0"], "workers must be a whole number >= 1"),
        (["--ray", "127.0.0.1:9"], "cannot reach a Ray cluster at 127.0.0.1:9"),
        (["--ray", "no-port"], "HOST:PORT"),
    ],
)
def test_bad_scale_settings_are_one_line_errors(extra, needle):
    p = run(*CERTIFY, *extra, timeout=120)
    assert needle in one_line_error(p)


def test_the_patch_attack_does_not_shard():
    p = run(
        "attack", "--model", "zoo:mnist-cnn", "--data", "mnist5k", "--attack", "patch", "--n", "10", "--workers", "1"
    )
    assert "does not shard" in one_line_error(p)
