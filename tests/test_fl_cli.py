"""``bastion fl simulate`` and ``bastion fl matrix`` end to end (real subprocesses, a real Flower simulation on
digits + digits-mlp), and their one-line refusals (exit 2, before any simulation starts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.cli import main

# flwr is the optional `federated` extra (in `test`, so CI runs these); without it the module is skipped, not failed
pytest.importorskip("flwr")

BASTION = str(Path(sys.executable).parent / "bastion")
SMALL = ["--arch", "digits-mlp", "--data", "digits", "--clients", "4", "--malicious", "0.25"]


def bastion(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BASTION, *args], capture_output=True, text=True, timeout=600)


def test_simulate_json_reports_the_attacked_and_the_clean_run(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    r = bastion(
        "fl", "simulate", *SMALL, "--rounds", "3", "--attack", "sign-flip", "--aggregator", "fedavg",
        "--baseline", "--workers", "2", "--out", str(out), "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert {"final_accuracy", "clean_run_accuracy", "rounds", "spec", "seconds"} <= set(report)
    assert report["spec"]["attack"] == "sign-flip" and report["spec"]["local"]["epochs"] == 2
    assert [e["round"] for e in report["rounds"]] == [0, 1, 2, 3]
    assert report["clean_run_accuracy"] >= 0.6  # 4 clients, 3 rounds: measured 0.85
    assert report["final_accuracy"] <= report["clean_run_accuracy"] - 0.3  # one boosted flipper of four wrecks FedAvg
    assert json.loads(out.read_text())["final_accuracy"] == report["final_accuracy"]


def test_matrix_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "fl-report"
    r = bastion(
        "fl", "matrix", *SMALL, "--rounds", "1", "--attacks", "sign-flip,backdoor", "--aggregators", "fedavg,median",
        "--workers", "2", "--out", str(out), "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    table = json.loads(r.stdout)
    (setting,) = table["settings"]
    assert setting["attacks"] == ["none", "sign-flip", "backdoor"] and setting["aggregators"] == ["fedavg", "median"]
    assert len(setting["cells"]) == 6
    assert all(c["drop"] is not None for c in setting["cells"])
    saved = json.loads((out / "matrix.json").read_text())
    assert len(saved["results"]) == 6
    html = (out / "index.html").read_text()
    assert "sign-flip" in html and "median" in html


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["simulate", "--attack", "nope"], "unknown attack"),
        (["simulate", "--aggregator", "krun"], "did you mean 'krum'"),
        (["simulate", "--attack", "ipm", "--boost", "3"], "--boost applies to sign-flip and backdoor"),
        (["simulate", "--malicious", "0.7", "--attack", "ipm"], "malicious must be a share"),
        (["simulate", "--param", "noequals", "--attack", "ipm"], "--param takes KEY=VALUE"),
        (["simulate", "--out", "/no/such/folder/run.json"], "does not exist"),
        (["simulate", "--arch", "digits-mlp", "--data", "mnist5k"], "architecture 'digits-mlp' takes"),
        (["matrix", "--attacks", "ipm", "--aggregators", "fedavg", "--out", __file__], "is a file"),
        (["simulate", "--ray", "127.0.0.1:9"], "cannot reach a Ray cluster at 127.0.0.1:9"),
        (["matrix", "--attacks", "ipm", "--aggregators", "fedavg", "--out", "m", "--ray", "nope"], "HOST:PORT"),
        (["simulate", "--ray", "127.0.0.1:9", "--workers", "2"], "on a Ray cluster the clients use its CPUs"),
        (["simulate", "--deploy", "--workers", "2"], "--deploy runs its own superlink"),
    ],
)
def test_bad_input_is_one_line_exit_2_before_any_work(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import flwr.simulation

    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("the simulation started")

    monkeypatch.setattr(flwr.simulation, "run_simulation", started)
    with pytest.raises(SystemExit) as exc:
        main(["fl", *args])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2  # the progress header may precede the error
