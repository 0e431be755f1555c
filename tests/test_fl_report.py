"""The federated matrix report (bastion.federated.report) on synthetic result dicts: the table's grouping and
drops, the HTML page (every name, escaping, the backdoor table, one chart per attack), the JSON file."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest

from bastion.errors import UsageError
from bastion.federated.report import matrix_table, render_matrix_html, write_matrix_report

LOCAL = {"epochs": 2, "batch_size": 32, "lr": 0.05, "momentum": 0.9}


def run(
    attack: str,
    aggregator: str,
    final: float,
    *,
    clients: int = 20,
    alpha: float | None = None,
    malicious: float = 0.2,
    asr: float | None = None,
    rounds: int = 3,
) -> dict[str, Any]:
    """One synthetic result dict shaped like the simulation's."""
    per_round: list[dict[str, Any]] = [{"round": 0, "accuracy": 0.1}]
    for r in range(1, rounds + 1):
        entry: dict[str, Any] = {"round": r, "accuracy": 0.1 + (final - 0.1) * r / rounds, "malicious_weight": 0.1 * r}
        if asr is not None:
            entry["backdoor_asr"] = asr * r / rounds
        per_round.append(entry)
    out: dict[str, Any] = {
        "spec": {
            "arch": "mnist-cnn",
            "data": "mnist5k",
            "clients": clients,
            "malicious": malicious,
            "attack": attack,
            "attack_params": {},
            "aggregator": aggregator,
            "aggregator_params": {},
            "rounds": rounds,
            "alpha": alpha,
            "seed": 0,
            "local": LOCAL,
        },
        "final_accuracy": final,
        "rounds": per_round,
        "seconds": 12.5,
    }
    if asr is not None:
        out["backdoor_asr"] = asr
    return out


def cells(table: dict[str, Any], setting: int = 0) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["attack"], c["aggregator"]): c for c in table["settings"][setting]["cells"]}


MATRIX = [
    run("none", "fedavg", 0.95),
    run("none", "krum", 0.92),
    run("sign-flip", "fedavg", 0.30),
    run("sign-flip", "krum", 0.90),
    run("alie", "fedavg", 0.60),
    run("alie", "median", 0.80),  # median has no clean run
]


def no_nan(name: str) -> Any:
    raise ValueError(f"non-finite number {name} in the JSON")


# -- the table --------------------------------------------------------------------------------------------------


def test_drop_is_against_the_same_aggregators_clean_run() -> None:
    table = matrix_table(MATRIX)
    assert len(table["settings"]) == 1
    s = table["settings"][0]
    assert s["attacks"] == ["none", "sign-flip", "alie"]
    assert s["aggregators"] == ["fedavg", "krum", "median"]
    by = cells(table)
    assert by["sign-flip", "fedavg"]["clean_accuracy"] == pytest.approx(0.95)
    assert by["sign-flip", "fedavg"]["drop"] == pytest.approx(0.65)
    assert by["sign-flip", "krum"]["clean_accuracy"] == pytest.approx(0.92)
    assert by["sign-flip", "krum"]["drop"] == pytest.approx(0.02)
    assert by["alie", "fedavg"]["drop"] == pytest.approx(0.35)
    assert by["none", "krum"]["drop"] == pytest.approx(0.0)
    assert by["alie", "median"]["clean_accuracy"] is None
    assert by["alie", "median"]["drop"] is None
    assert ("sign-flip", "median") not in by
    # the mean malicious weight over rounds 1..3 (0.1, 0.2, 0.3); no backdoor outside backdoor runs
    assert by["sign-flip", "krum"]["malicious_weight"] == pytest.approx(0.2)
    assert by["sign-flip", "krum"]["backdoor_asr"] is None
    assert by["sign-flip", "krum"]["seconds"] == pytest.approx(12.5)


def test_none_comes_first_and_order_is_first_seen() -> None:
    results = [run("ipm", "median", 0.7), run("none", "median", 0.9), run("ipm", "fedavg", 0.5)]
    s = matrix_table(results)["settings"][0]
    assert s["attacks"] == ["none", "ipm"]
    assert s["aggregators"] == ["median", "fedavg"]
    assert set(s["cells"][0]) == {
        "attack",
        "aggregator",
        "final_accuracy",
        "clean_accuracy",
        "drop",
        "backdoor_asr",
        "malicious_weight",
        "seconds",
    }


def test_settings_are_separated_by_clients_alpha_and_share() -> None:
    results = [
        run("none", "fedavg", 0.95),
        run("sign-flip", "fedavg", 0.40),
        run("none", "fedavg", 0.80, alpha=0.5),
        run("sign-flip", "fedavg", 0.20, alpha=0.5),
        run("none", "fedavg", 0.90, clients=10),
        run("sign-flip", "fedavg", 0.60, clients=10),
        run("sign-flip", "fedavg", 0.10, malicious=0.4),
    ]
    table = matrix_table(results)
    keys = [(s["clients"], s["alpha"], s["malicious"]) for s in table["settings"]]
    assert keys == [(20, None, 0.2), (20, 0.5, 0.2), (10, None, 0.2), (20, None, 0.4)]
    assert cells(table, 0)["sign-flip", "fedavg"]["drop"] == pytest.approx(0.55)
    assert cells(table, 1)["sign-flip", "fedavg"]["drop"] == pytest.approx(0.60)  # not the IID clean run
    assert cells(table, 2)["sign-flip", "fedavg"]["drop"] == pytest.approx(0.30)
    assert cells(table, 3)["sign-flip", "fedavg"]["drop"] is None  # no clean run with 40 % malicious


def test_a_clean_run_with_another_share_serves_its_clients_and_alpha() -> None:
    # an attack-free run has no malicious clients, whatever share its spec names
    results = [run("none", "fedavg", 0.9, malicious=0.0), run("gaussian", "fedavg", 0.7, malicious=0.3)]
    table = matrix_table(results)
    assert [s["malicious"] for s in table["settings"]] == [0.3]
    assert cells(table)["gaussian", "fedavg"]["drop"] == pytest.approx(0.2)


def test_non_finite_numbers_become_none() -> None:
    bad = run("sign-flip", "fedavg", 0.5)
    bad["final_accuracy"] = math.nan
    by = cells(matrix_table([run("none", "fedavg", 0.9), bad]))
    assert by["sign-flip", "fedavg"]["final_accuracy"] is None
    assert by["sign-flip", "fedavg"]["drop"] is None


def test_a_result_without_a_spec_is_refused() -> None:
    with pytest.raises(UsageError):
        matrix_table([{"final_accuracy": 0.5}])


# -- the page ---------------------------------------------------------------------------------------------------


def test_html_names_every_attack_and_aggregator_and_draws_one_chart_per_attack() -> None:
    page = render_matrix_html(MATRIX, title="FL matrix")
    for name in ("none", "sign-flip", "alie", "fedavg", "krum", "median"):
        assert f">{name}<" in page
    assert "95.0 %" in page and "30.0 %" in page
    assert "−65.0" in page  # sign-flip x fedavg, in percentage points
    assert "—" in page  # sign-flip x median and none x median never ran
    assert page.count("<svg") == 3
    assert page.count("<polyline") == 6
    assert "Backdoor success" not in page
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "mnist-cnn" in page and "mnist5k" in page and "batch size 32" in page


def test_html_has_one_chart_per_attack_per_setting() -> None:
    results = [*MATRIX, *(run(r["spec"]["attack"], r["spec"]["aggregator"], 0.5, alpha=0.1) for r in MATRIX[:4])]
    page = render_matrix_html(results)
    assert page.count("<section>") == 2
    assert page.count("<svg") == 3 + 2
    assert "Dirichlet α = 0.1" in page and "IID" in page


def test_html_shows_backdoor_table_only_with_backdoor_runs() -> None:
    results = [*MATRIX, run("backdoor", "fedavg", 0.94, asr=0.97), run("backdoor", "krum", 0.91, asr=0.12)]
    page = render_matrix_html(results)
    assert "Backdoor success" in page
    assert "97.0 %" in page and "12.0 %" in page
    table = page.split("Backdoor success", 1)[1].split("</table>", 1)[0]
    assert re.findall(r'<th class="row">([^<]*)</th><td', table) == ["backdoor"]
    assert cells(matrix_table(results))["backdoor", "krum"]["backdoor_asr"] == pytest.approx(0.12)
    assert "Backdoor success" not in render_matrix_html(MATRIX)


def test_html_escapes_every_name() -> None:
    evil = "<script>alert(1)</script>"
    results = [run("none", 'agg"&<b>', 0.9), run(evil, 'agg"&<b>', 0.4)]
    results[0]["spec"]["arch"] = "<img src=x onerror=alert(1)>"
    page = render_matrix_html(results, title="<i>title</i>")
    assert evil not in page and "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>" not in page and "agg&quot;&amp;&lt;b&gt;" in page
    assert "<img" not in page and "<i>title" not in page


def test_heat_colours_run_from_red_to_green() -> None:
    page = render_matrix_html([run("none", "fedavg", 0.0), run("ipm", "fedavg", 1.0)])
    colours = re.findall(r'<td style="background:(#[0-9a-f]{6})"', page)
    assert colours == ["#f8696b", "#63be7b"]


# -- the files --------------------------------------------------------------------------------------------------


def test_write_report_round_trips_without_nan(tmp_path) -> None:
    results = [*MATRIX, run("backdoor", "fedavg", 0.94, asr=0.97)]
    results[2]["rounds"][1]["accuracy"] = math.nan
    results[3]["seconds"] = math.inf
    paths = write_matrix_report(results, tmp_path / "deep" / "report")
    assert set(paths) == {"json", "html"}
    assert paths["json"].name == "matrix.json" and paths["html"].name == "index.html"
    doc = json.loads(paths["json"].read_text(encoding="utf-8"), parse_constant=no_nan)
    assert doc["table"] == matrix_table(results)
    assert cells(doc["table"])["sign-flip", "krum"]["seconds"] is None
    assert doc["results"][2]["rounds"][1]["accuracy"] is None
    assert doc["results"][0] == results[0]
    assert len(doc["results"]) == len(results)
    page = paths["html"].read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and "Backdoor success" in page


def test_write_report_refuses_no_results(tmp_path) -> None:
    with pytest.raises(UsageError, match="no federated results"):
        write_matrix_report([], tmp_path / "out")
    assert not (tmp_path / "out").exists()
