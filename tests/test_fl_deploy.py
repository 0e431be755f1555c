"""The federated apps on a real Flower deployment on loopback: ``flower-superlink``, one ``flower-supernode``
per client and ``flwr run`` (bastion.federated.deploy), and that it computes what the simulation computes."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

# flwr is the optional `federated` extra (in `test`, so CI runs these); without it the module is skipped, not failed
pytest.importorskip("flwr")

from bastion.errors import UsageError
from bastion.federated.deploy import local_federation, run_deployed
from bastion.federated.spec import FLSpec

SPECS = [
    FLSpec(arch="digits-mlp", data="digits", clients=3, rounds=2),
    FLSpec(
        arch="digits-mlp", data="digits", clients=3, rounds=2, attack="sign-flip", malicious=0.34, aggregator="median"
    ),
]


def _running(pids: set[int]) -> list[int]:
    """The pids still running (zombies are not: init may leave the federation's grandchildren unreaped)."""
    out = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            out.append(pid)
    return out


def _using(ports: list[int]) -> list[str]:
    """Command lines of running processes that name one of ``ports`` on loopback (the federation's own)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(f"127.0.0.1:{p}" in cmd for p in ports) and _running({int(entry.name)}):
            found.append(cmd)
    return found


def _assert_all_gone(fed) -> None:
    assert len(fed.pids) >= 1 + 2 * fed.n_supernodes  # SuperLink, SuperNodes, their SuperExecs
    deadline = time.monotonic() + 10
    while (_running(fed.pids) or _using([fed.port, *fed.node_ports])) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _running(fed.pids) == []
    assert _using([fed.port, *fed.node_ports]) == []


def test_a_deployment_that_cannot_start_fails_at_once():
    t0 = time.monotonic()
    for n in (0, -1, 1.5, True):
        with pytest.raises(UsageError, match="SuperNodes"), local_federation(n):
            pass
    with pytest.raises(UsageError, match=r"3 SuperNodes runs 3-client specs only, not \[4\]"):
        run_deployed([SPECS[0], SPECS[0].replace(clients=4)], n_supernodes=3)
    with pytest.raises(UsageError, match="unknown attack"):
        run_deployed(SPECS[0].replace(attack="nope", malicious=0.34))
    assert time.monotonic() - t0 < 5


def test_the_federation_rejects_bad_apps_and_stops_everything_when_interrupted(tmp_path, monkeypatch):
    from bastion.federated import deploy

    not_an_app = tmp_path / "empty"
    not_an_app.mkdir()
    bad_app = tmp_path / "bad-app"
    bad_app.mkdir()
    (bad_app / "pyproject.toml").write_text("[project]\nname = 'bad-app'\n")

    def interrupt(fed, run_id, *args):  # Ctrl-C while the run is under way
        deadline = time.monotonic() + 120
        while fed.run_status(run_id) != "running" and time.monotonic() < deadline:
            time.sleep(0.5)
        raise KeyboardInterrupt

    two = [SPECS[0].replace(clients=2, rounds=5)]
    with pytest.raises(KeyboardInterrupt), local_federation(2, workdir=tmp_path / "fed") as fed:
        assert fed.online() == 2
        with pytest.raises(UsageError, match="no Flower app") as e:
            fed.run(two, app=not_an_app)
        assert "\n" not in str(e.value)
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match=r"flwr run .* failed: Invalid Flower App configuration") as e:
            fed.run(two, app=bad_app)
        assert "\n" not in str(e.value)
        assert time.monotonic() - t0 < 60
        monkeypatch.setattr(deploy.Federation, "_wait_run", interrupt)
        with pytest.raises(UsageError, match=r"2 SuperNodes runs 2-client specs only, not \[3\]"):
            fed.run(SPECS)
        fed.run(two)
    _assert_all_gone(fed)
    assert (tmp_path / "fed" / "superlink.log").is_file()  # a given work directory is kept


def test_a_start_timeout_names_the_process_and_stops_everything(tmp_path):
    with pytest.raises(RuntimeError, match=r"^superlink did not answer on http://127\.0\.0\.1:\d+/health") as e:
        with local_federation(2, workdir=tmp_path, start_timeout=0.01):
            pass
    assert f"the end of {tmp_path / 'superlink.log'}" in str(e.value)
    port = int(re.search(r"127\.0\.0\.1:(\d+)", str(e.value)).group(1))
    assert _using([port]) == []


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_deployment_computes_what_the_simulation_computes(tmp_path):
    from bastion.federated.simulate import simulate

    with local_federation(3, workdir=tmp_path) as fed:
        deployed = fed.run(SPECS, timeout=1200)
        assert fed.run_status(fed.flwr("list")["runs"][0]["run-id"]).startswith("finished")
    _assert_all_gone(fed)

    assert [r["spec"] for r in deployed] == [s.to_dict() for s in SPECS]
    clean, attacked = (r["final_accuracy"] for r in deployed)
    assert clean > 0.85  # measured 0.928 (digits, 3 IID clients, 2 rounds)
    assert attacked > 0.6  # measured 0.864: the median outvotes the one sign-flipper
    # Same seeds, same partitions, same code: the same numbers, round by round (accuracies are k/360 on
    # digits; only the order in which replies arrive, and so float summation, could differ).
    simulated = simulate(SPECS, workers=1)
    for d, s in zip(deployed, simulated, strict=True):
        assert [r["accuracy"] for r in d["rounds"]] == pytest.approx([r["accuracy"] for r in s["rounds"]], abs=1e-6)
        assert [r.get("malicious_weight") for r in d["rounds"]] == [r.get("malicious_weight") for r in s["rounds"]]
