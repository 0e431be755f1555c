"""The admin dashboard in a real headless Chromium (Debian's chromium via playwright): with an admin key it
renders its charts from real traffic with no console error and no external request; without a key, or
with a client key, it is refused."""

from __future__ import annotations

import shutil

import httpx
import pytest

from bastion.serve.config import load_config
from bastion.serve.keys import create_key
from bastion.serve.server import build_app
from bastion.serve.store import Store
from browser_helpers import CHROMIUM_ARGS, require_browser
from serve_helpers import running, wait_drift_windows


@pytest.fixture
def browser() -> None:
    require_browser()


def test_dashboard_renders_with_data_and_refuses_without_admin_key(browser, tmp_path, mnist_cnn, mnist):
    from playwright.sync_api import sync_playwright

    store = Store(f"sqlite:///{tmp_path / 'd.db'}")
    client, _ = create_key(store, "client")
    admin, _ = create_key(store, "admin")
    cfg = load_config(None, drift={"window": 50, "permutations": 99})
    app, _ = build_app(model=mnist_cnn, reference=mnist, config=cfg, store=store, spool=str(tmp_path / "s.jsonl"))
    with running(app) as url:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {client}"}, timeout=30) as c:
            for i in range(0, 160, 16):  # clean traffic, then noise: abstentions, flags and a drift alarm
                x = mnist.x_test[500 + i : 516 + i]
                if i >= 80:
                    x = (x + 0.5 * __import__("torch").randn_like(x)).clamp(0, 1)
                assert c.post("/v1/predict", json={"inputs": x.tolist()}).status_code == 200
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin}"}, timeout=30) as a:
            wait_drift_windows(a, 3)  # 160 inputs, windows of 50
        seen: dict[str, list] = {"console": [], "errors": [], "external": [], "status": []}
        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS, headless=True)
            try:
                anon = b.new_page()
                refused = anon.goto(url + "/dashboard")
                assert refused.status == 401 and "API key" in anon.content()
                as_client = b.new_context(extra_http_headers={"Authorization": f"Bearer {client}"}).new_page()
                assert as_client.goto(url + "/dashboard").status == 403
                page = b.new_context(extra_http_headers={"Authorization": f"Bearer {admin}"}).new_page()
                page.on("console", lambda m: seen["console"].append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: seen["errors"].append(str(e)))
                page.on("request", lambda r: None if r.url.startswith(url) else seen["external"].append(r.url))
                response = page.goto(url + "/dashboard", wait_until="load")
                assert response.status == 200
                charts = page.eval_on_selector_all("svg[role=img]", "els => els.map(e => e.getAttribute('aria-label'))")
                polylines = page.eval_on_selector_all("svg polyline", "els => els.length")
                bars = page.eval_on_selector_all("svg rect[fill='#9467bd']", "els => els.length")
                summary = page.inner_text("#summary")
                page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            finally:
                b.close()
    assert not seen["console"] and not seen["errors"] and not seen["external"], seen
    assert any(c.startswith("Traffic") for c in charts) and any(c.startswith("Drift") for c in charts), charts
    assert any(c.startswith("Abstention") for c in charts) and any(c.startswith("Detector scores") for c in charts)
    assert polylines >= 3 and bars >= 5
    assert "records committed 10" in summary, summary
    alarms = next(c for c in charts if c.startswith("Drift"))
    assert "0 alarm" not in alarms, alarms  # the noisy half raised at least one
