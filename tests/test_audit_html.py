"""The HTML and JUnit writers of the audit report, on a realistic report built from result.py's dataclasses.

The report holds real inputs (the first mnist5k test images with a few pixels changed, a breast-cancer
record with some features changed), plots of every kind, an ok / a skipped / an errored probe, passing
and failing gates, and a model spec with markup in it to prove escaping. ``build_report`` is shared
with the browser test (test_audit_browser.py).
"""

from __future__ import annotations

import base64
import io
import json
import os
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import bastion
from bastion.audit.html import write_html
from bastion.audit.junit import write_junit
from bastion.audit.result import SCHEMA, Check, Example, Plot, ProbeResult, Series

EVIL = "<script>alert(1)</script>"
MODEL_SPEC = f"file:models/{EVIL}.onnx"

# (channel, row, col) pixels of the first mnist image raised to 1.0 (background) / lowered to 0.0 (stroke).
RAISED = [(0, 2, 2), (0, 2, 3), (0, 25, 25)]


def _image_examples() -> tuple[list[Example], list[tuple[int, int, int]]]:
    mnist = bastion.load_dataset("mnist5k")
    examples, lowered = [], []
    for i in range(2):
        clean = mnist.x_test[i].clone()
        adv = clean.clone()
        for c, r, k in RAISED:
            adv[c, r, k] = 1.0
        stroke = divmod(int(clean[0].argmax()), clean.shape[2])  # a bright stroke pixel: make it black
        adv[0, stroke[0], stroke[1]] = 0.0
        lowered.append((0, *stroke))
        label = int(mnist.y_test[i])
        examples.append(
            Example(
                index=i,
                label=label,
                pred_clean=label,
                pred_adv=(label + 1) % 10,
                attack="pgd",
                norm="l2",
                eps=2.0,
                perturbation=float((adv - clean).norm()),
                clean=clean.tolist(),
                adversarial=adv.tolist(),
            )
        )
    return examples, lowered


def _tabular_example() -> Example:
    cancer = bastion.load_dataset("breast-cancer")
    clean = cancer.x_test[0].clone()
    adv = clean.clone()
    for j in range(15):  # 15 of 30 features move: the table must stop at 12
        adv[j] = float(min(max(clean[j] + (0.01 * (j + 1)) * (1 if j % 2 else -1), 0.0), 1.0))
    label = int(cancer.y_test[0])
    return Example(
        index=0,
        label=label,
        pred_clean=label,
        pred_adv=1 - label,
        attack="tabular",
        norm="linf",
        eps=0.15,
        perturbation=float((adv - clean).abs().max()),
        clean=clean.tolist(),
        adversarial=adv.tolist(),
    )


def build_report(lowered_out: list[Any] | None = None) -> dict[str, Any]:
    """A report dict in the documented layout, from the dataclasses (what the runner produces)."""
    image_examples, lowered = _image_examples()
    if lowered_out is not None:
        lowered_out.extend(lowered)
    eps = [0.5, 1.0, 2.0, 4.0]
    whitebox = ProbeResult(
        probe="whitebox",
        title="White-box evasion",
        threat="evasion / white-box",
        risk="high",
        summary="Robust accuracy falls from 0.99 to 0.07 at eps=2 (L2) under APGD-CE + PGD.",
        params={
            "attacks": ["APGD(loss='ce', steps=100)", "PGD(steps=40, restarts=1)"],
            "eps": eps,
            "norm": "l2",
            "schedule": {"step_size": 0.1, "decay": [0.5, 0.75]},
            "note": "<b>bold</b>",
        },
        metrics={
            "clean_accuracy": 0.99,
            **{f"robust_accuracy@eps={e}": a for e, a in zip(eps, [0.9, 0.6, 0.07, 0.0])},
            "median_perturbation": 1.37,
            "nan_metric": None,
        },
        plots=[
            Plot(
                id="robustness",
                title="Robust accuracy vs eps",
                kind="line",
                x_label="eps (L2)",
                y_label="robust accuracy",
                series=[
                    Series("apgd-ce", eps, [0.9, 0.6, 0.07, 0.0]),
                    Series("pgd", eps, [0.92, 0.66, 0.1, 0.01]),
                    Series("empty", [], []),
                ],
                x_log=True,
            ),
            Plot(
                id="norms",
                title="Minimal perturbation norms",
                kind="hist",
                x_label="||delta||_2",
                y_label="inputs",
                series=[
                    Series("cw", [0.8, 1.1, 1.3, 1.4, 1.5, 1.9, 2.2]),
                    Series("deepfool", [1.0, 1.2, 1.6, 1.7, 2.5]),
                    Series("none", []),
                ],
            ),
            Plot(
                id="empty-hist",
                title="Nothing measured",
                kind="hist",
                x_label="x",
                y_label="count",
                series=[Series("a", [])],
            ),
        ],
        checks=[
            Check(
                "wb.eps-monotone",
                "Accuracy falls as eps grows",
                "pass",
                "Robust accuracy is non-increasing in eps.",
                {"robust_accuracy": [0.9, 0.6, 0.07, 0.0]},
            ),
            Check(
                "wb.zero-grad",
                "Gradients are non-zero",
                "warn",
                "3% of inputs have a zero gradient: possible gradient masking.",
                {"fraction": 0.03},
            ),
        ],
        examples=image_examples,
        seconds=12.4,
        seed=0,
    )
    blackbox = ProbeResult(
        probe="blackbox",
        title="Black-box evasion (score-based)",
        threat="evasion / black-box",
        risk="medium",
        summary="Square attack fools 41% of correctly classified inputs within 500 queries.",
        params={"attack": "Square(eps=0.15, max_queries=500)", "max_queries": 500},
        metrics={"success_rate": 0.41, "median_queries": 120.0},
        plots=[
            Plot(
                id="success-by-class",
                title="Success rate by class",
                kind="bar",
                x_label="class",
                y_label="success rate",
                series=[Series("square", [0, 1], [0.3, 0.5]), Series("noise", [0, 1], [0.0, 0.02])],
                categories=["malignant", "benign"],
            )
        ],
        checks=[
            Check(
                "bb.beats-wb",
                "Black-box does not beat white-box",
                "fail",
                "Black-box success 0.41 exceeds white-box 0.2: gradient masking likely.",
                {"blackbox": 0.41, "whitebox": 0.2},
            )
        ],
        examples=[_tabular_example()],
        seconds=3.25,
        seed=1,
    )
    transfer = ProbeResult(
        probe="transfer",
        title="Transfer attack",
        threat="evasion / transfer",
        status="skipped",
        reason="no surrogate model given (--surrogate)",
        seconds=0.0,
        seed=2,
        checks=[Check("tr.surrogate", "Surrogate agrees with target", "skipped", "no surrogate model given")],
    )
    patch = ProbeResult(
        probe="patch",
        title="Universal patch",
        threat="evasion / physical",
        status="error",
        reason="RuntimeError: shape mismatch <b>[1, 28, 28]</b>\nTraceback line 2",
        seconds=0.5,
        seed=3,
    )
    probes = [whitebox, blackbox, transfer, patch]
    gates = [
        {
            "expression": "robust_accuracy@eps=2.0 >= 0.5",
            "metric": "robust_accuracy@eps=2.0",
            "op": ">=",
            "threshold": 0.5,
            "value": 0.07,
            "passed": False,
        },
        {
            "expression": "clean_accuracy >= 0.9",
            "metric": "clean_accuracy",
            "op": ">=",
            "threshold": 0.9,
            "value": 0.99,
            "passed": True,
        },
    ]
    return {
        "schema": SCHEMA,
        "bastion_version": bastion.__version__,
        "created": "2026-01-02T03:04:05Z",
        "seconds": 17.3,
        "resumed": False,
        "settings": {
            "model": MODEL_SPEC,
            "data": "mnist5k",
            "profile": "quick",
            "norm": "l2",
            "eps": eps,
            "seed": 0,
            "n": 200,
            "probes": [p.probe for p in probes],
        },
        "model": {
            "spec": MODEL_SPEC,
            "fingerprint": "sha256:" + "ab12" * 16,
            "kind": "onnx",
            "white_box": True,
            "output": "logits",
            "input_shape": [1, 28, 28],
            "n_classes": 10,
            "bounds": [0.0, 1.0],
        },
        "data": {
            "spec": "mnist5k",
            "fingerprint": "sha256:" + "cd34" * 16,
            "n_test": 1000,
            "input_shape": [1, 28, 28],
            "n_classes": 10,
            "kind": "image",
        },
        "environment": {"python": "3.11.9", "torch": "2.13.0", "platform": "linux", "threads": 2},
        "probes": [p.to_dict() for p in probes],
        "checks": [c.to_dict() for p in probes for c in p.checks],
        "metrics": {"clean_accuracy": 0.99, "robust_accuracy@eps=2.0": 0.07},
        "gates": gates,
        "verdict": {"risk": "high", "validity": "fail", "gates": "fail"},
    }


def write_report_dir(directory: Path) -> Path:
    """Write report.json, report.html and junit.xml of :func:`build_report` into ``directory``; the html path."""
    report = build_report()
    (directory / "report.json").write_text(json.dumps(report), encoding="utf-8")
    write_junit(report, directory / "junit.xml")
    return write_html(report, directory / "report.html")


class _Page(HTMLParser):
    """Tags in document order, the rows of the summary table and the text of the page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.summary_rows: list[str | None] = []
        self.text: list[str] = []
        self._tables: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "table":
            self._tables.append(a.get("id"))
        if tag == "tr" and self._tables and self._tables[-1] == "summary" and "data-probe" in a:
            self.summary_rows.append(a["data-probe"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self._tables:
            self._tables.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, str, _Page, list[Any]]:
    lowered: list[Any] = []
    report = build_report(lowered)
    out = tmp_path_factory.mktemp("audit")
    path = write_html(report, out / "report.html")
    text = path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    return report, path, text, page, lowered


def _png(src: str) -> Image.Image:
    assert src.startswith("data:image/png;base64,"), src[:60]
    data = base64.b64decode(src.split(",", 1)[1], validate=True)
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.format == "PNG"
    return img


def test_self_contained(written):
    _, _, text, page, _ = written
    assert "http://" not in text and "https://" not in text
    for tag, attrs in page.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed"), tag
        for key in ("src", "href", "srcset", "action", "poster"):
            value = attrs.get(key)
            if value is not None:
                assert value.startswith(("data:image/png;base64,", "#")), (tag, key, value[:80])
    assert "url(" not in text and "@import" not in text  # no CSS-loaded resources either


def test_every_image_is_a_png_data_uri(written):
    _report, _, _, page, _ = written
    imgs = [a for t, a in page.tags if t == "img"]
    # 3 plots of probe 1 + 1 of probe 2, 3 images (clean, adversarial, perturbation) per mnist example
    assert len(imgs) == 4 + 3 * 2
    for a in imgs:
        assert a.get("alt"), a
        img = _png(a["src"])
        assert img.width > 0 and img.height > 0
    plots = [a for a in imgs if "data-plot" in a]
    assert [a["data-plot"] for a in plots] == ["robustness", "norms", "empty-hist", "success-by-class"]
    assert all(_png(a["src"]).size == (640, 360) for a in plots)


def test_gallery_images_are_upscaled_and_the_perturbation_is_signed(written):
    report, _, _, page, lowered = written
    imgs = [a for t, a in page.tags if t == "img" and "data-plot" not in a]
    clean, adv, diff = (_png(imgs[k]["src"]) for k in range(3))
    assert clean.size == adv.size == diff.size == (112, 112)  # 28 px, 4x nearest neighbour
    first = report["probes"][0]["examples"][0]
    # the clean image is the real mnist digit: pixel values map back to the input (4x4 blocks)
    for r, k in [(14, 14), (2, 2), (20, 10)]:
        assert abs(clean.convert("L").getpixel((4 * k + 1, 4 * r + 2)) / 255 - first["clean"][0][r][k]) < 0.01
    assert adv.convert("L").getpixel((4 * 2 + 1, 4 * 2 + 1)) == 255
    rgb = diff.convert("RGB")
    for _, r, k in RAISED:  # raised pixels are red, lowered ones blue, untouched ones grey
        red, green, blue = rgb.getpixel((4 * k + 1, 4 * r + 1))
        assert red > 150 and green < 100 and blue < 100
    _, r, k = lowered[0]
    red, green, blue = rgb.getpixel((4 * k + 1, 4 * r + 1))
    assert blue > 150 and red < 100
    assert len(set(rgb.getpixel((4 * 10 + 1, 4 * 0 + 1)))) == 1  # grey
    assert "scaled to max |Δ| = 1." in "".join(page.text)


def test_summary_table_first_one_row_per_probe(written):
    report, _, text, page, _ = written
    names = [p["probe"] for p in report["probes"]]
    assert page.summary_rows == names
    order = [
        (t, a)
        for t, a in page.tags
        if (t == "table" and a.get("id") == "summary") or (t == "section" and (a.get("id") or "").startswith("probe-"))
    ]
    assert order[0][1].get("id") == "summary"
    assert [a["id"] for t, a in order[1:]] == [f"probe-{n}" for n in names]
    assert text.index('id="summary"') < text.index('id="checks"') < text.index('id="probe-whitebox"')
    body = "".join(page.text)
    for p in report["probes"]:
        assert p["title"] in body
    rows = text[text.index('id="summary"') : text.index("</table>", text.index('id="summary"'))]
    assert "no surrogate model given (--surrogate)" in rows  # a skipped row shows its reason
    assert "RuntimeError: shape mismatch" in rows and "Traceback line 2" not in rows  # an error: its first line
    checks_rows = [a["data-check"] for t, a in page.tags if t == "tr" and "data-check" in a]
    assert [c["id"] for c in report["checks"]] == checks_rows[: len(report["checks"])]


def test_badges_and_verdict(written):
    _, _, text, _, _ = written
    assert '<div data-verdict="risk"><span class="label">risk</span><span class="badge bad">high</span>' in text
    assert '<span class="badge warn">medium</span>' in text and '<span class="badge good">pass</span>' in text
    assert '<span class="badge muted">skipped</span>' in text and '<span class="badge bad">error</span>' in text


def test_tabular_example_shows_at_most_12_changed_features(written):
    report, _, text, _, _ = written
    section = text[text.index('id="probe-blackbox"') : text.index('id="probe-transfer"')]
    gallery = section[section.index('class="gallery"') :]
    assert "15 of 30 features changed" in gallery
    assert gallery.count("<tr>") == 1 + 12  # header + 12 rows
    ex = report["probes"][1]["examples"][0]
    deltas = [abs(a - c) for a, c in zip(ex["adversarial"], ex["clean"])]
    largest = deltas.index(max(deltas))
    assert f'<tr><td class="num">{largest}</td>' in gallery  # sorted by |delta|: the largest change comes first
    assert gallery.index(f'<tr><td class="num">{largest}</td>') < gallery.index("</tr>", gallery.index("<tbody>"))


def test_user_strings_are_escaped(written):
    _, _, text, page, _ = written
    assert EVIL not in text and "<b>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert not any(t == "script" for t, _ in page.tags)
    assert MODEL_SPEC in "".join(page.text)
    assert "RuntimeError: shape mismatch <b>[1, 28, 28]</b>" in "".join(page.text)


def test_junit_counts(tmp_path):
    report = build_report()
    path = write_junit(report, tmp_path / "junit.xml")
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    assert suite.get("name") == "bastion.audit"
    cases = suite.findall("testcase")
    by_class: dict[str, list[ET.Element]] = {}
    for c in cases:
        by_class.setdefault(c.get("classname"), []).append(c)
    assert len(by_class["bastion.audit.gates"]) == 2
    assert len(by_class["bastion.audit.checks"]) == 4
    assert len(by_class["bastion.audit.probes"]) == 4
    # failures: the failed gate and the failed check; errors: the errored probe; skipped: check + probe
    expect = {"tests": "10", "failures": "2", "errors": "1", "skipped": "2"}
    assert {k: suite.get(k) for k in expect} == expect
    assert {k: root.get(k) for k in expect} == expect
    assert float(suite.get("time")) == pytest.approx(12.4 + 3.25 + 0.0 + 0.5, abs=1e-3)
    gate = by_class["bastion.audit.gates"][0]
    assert gate.get("name") == "robust_accuracy@eps=2.0 >= 0.5"
    assert "0.07" in gate.find("failure").get("message")
    assert by_class["bastion.audit.gates"][1].find("failure") is None
    warn = next(c for c in cases if c.get("name") == "wb.zero-grad")
    assert warn.find("failure") is None and warn.find("system-out").text.startswith("WARN: ")
    errored = next(c for c in cases if c.get("name") == "patch")
    assert errored.find("error").get("message") == "RuntimeError: shape mismatch <b>[1, 28, 28]</b>"
    assert next(c for c in cases if c.get("name") == "transfer").find("skipped") is not None
    assert next(c for c in cases if c.get("name") == "whitebox").get("time") == "12.400"


def test_junit_strips_characters_xml_cannot_hold(tmp_path):
    report = {"probes": [ProbeResult("p", "P", "t", status="error", reason="boom \x1b[31mred\x00").to_dict()]}
    root = ET.parse(write_junit(report, tmp_path / "j.xml")).getroot()
    assert root.find("testsuite/testcase/error").get("message") == "boom [31mred"


def test_no_temp_files_and_overwrite(tmp_path):
    report = build_report()
    write_html(report, tmp_path / "report.html")
    write_junit(report, tmp_path / "junit.xml")
    write_html(report, tmp_path / "report.html")  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junit.xml", "report.html"]


def test_failed_write_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "report.html"
    path.write_text("old", encoding="utf-8")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_html({"probes": []}, path)
    with pytest.raises(OSError, match="disk full"):
        write_junit({"probes": []}, tmp_path / "junit.xml")
    assert path.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_empty_and_partial_reports_do_not_crash(tmp_path):
    for i, report in enumerate(
        [
            {},
            {"probes": None, "checks": None, "gates": None, "verdict": None, "settings": None},
            {"probes": [{"probe": "bare"}], "checks": [{"id": "c"}], "gates": [{"expression": "x > 1", "value": None}]},
            {
                "probes": [
                    {
                        "probe": "odd",
                        "plots": [
                            {"kind": "line", "series": [{"name": "s", "x": [1, 2], "y": [None, 0.5]}]},
                            {"kind": "bar", "series": [{"name": "b", "y": []}]},
                        ],
                        "examples": [
                            {"clean": [], "adversarial": []},
                            {"clean": [[[0.0, 1.0]]], "adversarial": [[[0.0, 1.0]]], "index": 1},
                        ],
                    }
                ]
            },
        ]
    ):
        text = write_html(report, tmp_path / f"r{i}.html").read_text(encoding="utf-8")
        assert text.startswith("<!DOCTYPE html>") and '<table id="summary">' in text
        page = _Page()
        page.feed(text)
        for t, a in page.tags:
            if t == "img":
                _png(a["src"])
        ET.parse(write_junit(report, tmp_path / f"j{i}.xml"))
