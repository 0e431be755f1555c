"""Open an HTML report in a real headless Chromium and report what a user's browser would see.

Uses the ``playwright`` package with Debian's ``chromium`` binary (``executable_path``), never a
browser that ``playwright install`` downloads. ``inspect_report`` collects console errors, page
errors, failed requests and any request that leaves the file (the report must be self-contained),
and measures images and the summary table in the loaded page.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

_IN_PAGE = """() => {
  const imgs = Array.from(document.images);
  const rows = Array.from(document.querySelectorAll('#summary tbody tr'));
  return {
    title: document.title,
    images: imgs.length,
    broken: imgs.filter(i => !i.complete || i.naturalWidth === 0).length,
    summary_rows: rows.map(r => r.innerText.replace(/\\s+/g, ' ').trim()),
    summary_probes: rows.map(r => r.getAttribute('data-probe')),
    sections: Array.from(document.querySelectorAll('section[id^="probe-"]')).map(s => s.id),
  };
}"""


def browser_unavailable() -> str | None:
    """Why a headless browser cannot run here, or None when it can."""
    if shutil.which("chromium") is None:
        return "no 'chromium' executable on PATH (Debian: apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "the 'playwright' Python package is not installed (pip install -e '.[test]')"
    return None


def require_browser() -> None:
    """Skip the calling test when no headless browser is available, or fail it under BASTION_REQUIRE_BROWSER=1
    (set by CI, where a missing browser must not pass silently)."""
    import os

    import pytest

    reason = browser_unavailable()
    if reason is None:
        return
    if os.environ.get("BASTION_REQUIRE_BROWSER") == "1":
        pytest.fail(
            f"BASTION_REQUIRE_BROWSER=1 but {reason}. Install Debian's chromium "
            "(sudo apt-get install -y chromium) and the test extra (pip install -e '.[test]')."
        )
    # a developer machine without chromium; CI sets BASTION_REQUIRE_BROWSER=1, so there it fails above instead
    pytest.skip(f"headless browser test needs Debian's chromium and playwright: {reason}")


def inspect_report(
    html_path: str | Path, screenshot: Path | None = None, width: int = 1280, height: int = 800
) -> dict[str, Any]:
    """Load ``html_path`` in headless Chromium and return what happened.

    Returns a dict with ``console_errors`` (texts of console messages of type error), ``page_errors``
    (uncaught exceptions), ``failed_requests`` ("URL: reason"), ``external_requests`` (every request
    that is not for the file itself or a ``data:`` URI), ``images`` / ``broken_images`` (counts;
    broken = not complete or zero natural width), ``summary_rows`` (text of each ``#summary`` body
    row), ``summary_probes`` (their ``data-probe``), ``sections`` (ids of the probe sections) and
    ``title``. With ``screenshot``, the first screen (viewport only) is saved there as PNG.
    """
    from playwright.sync_api import sync_playwright

    url = Path(html_path).resolve().as_uri()
    console_errors: list[str] = []
    page_errors: list[str] = []
    failed: list[str] = []
    external: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.on("requestfailed", lambda r: failed.append(f"{r.url}: {r.failure}"))
            page.on("request", lambda r: None if r.url == url or r.url.startswith("data:") else external.append(r.url))
            page.goto(url, wait_until="load")
            state = page.evaluate(_IN_PAGE)
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=False)
        finally:
            browser.close()
    return {
        "console_errors": console_errors,
        "page_errors": page_errors,
        "failed_requests": failed,
        "external_requests": external,
        "images": state["images"],
        "broken_images": state["broken"],
        "summary_rows": state["summary_rows"],
        "summary_probes": state["summary_probes"],
        "sections": state["sections"],
        "title": state["title"],
    }
