"""The audit's HTML report in a real headless Chromium: no console or page errors, no failed or external
requests, every image loads, and the summary table lists every probe.

Needs Debian's ``chromium`` and the ``playwright`` package; without them the test is skipped, unless
``BASTION_REQUIRE_BROWSER=1`` (set by CI) turns that into a failure.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from browser_helpers import inspect_report, require_browser
from test_audit_html import write_report_dir


@pytest.fixture(params=["real", "synthetic"])
def audit_report_html(request, tmp_path: Path) -> Path:
    """Path of an index.html with its report.json alongside: a real quick audit of mnist-cnn (the session's
    ``quick_audit``), and the synthetic report of test_audit_html (skipped / errored probes, tabular examples)."""
    if request.param == "real":
        _, out = request.getfixturevalue("quick_audit")
        return out / "index.html"
    return write_report_dir(tmp_path)


@pytest.fixture
def browser() -> None:
    require_browser()


# the "real" case pays for the session's quick audit: over 10 min beside another heavy test file (2 workers)
@pytest.mark.timeout(1800)
def test_report_renders_cleanly_in_chromium(browser, audit_report_html: Path, tmp_path: Path):
    report = json.loads(audit_report_html.with_name("report.json").read_text(encoding="utf-8"))
    shot = tmp_path / "first-screen.png"
    seen = inspect_report(audit_report_html, screenshot=shot, width=1280, height=800)
    assert seen["console_errors"] == []
    assert seen["page_errors"] == []
    assert seen["failed_requests"] == []
    assert seen["external_requests"] == []
    assert seen["images"] > 0 and seen["broken_images"] == 0, seen
    titles = [p["title"] for p in report["probes"]]
    assert len(seen["summary_rows"]) == len(titles)
    for title, row in zip(titles, seen["summary_rows"]):
        assert title in row
    assert seen["summary_probes"] == [p["probe"] for p in report["probes"]]
    assert seen["sections"] == [f"probe-{p['probe']}" for p in report["probes"]]
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
