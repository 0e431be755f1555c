"""The admin dashboard: one HTML page with inline SVG charts, rendered on the server (no script, no
external resource, so it opens behind any proxy and its content is testable as plain HTML)."""

from __future__ import annotations

import datetime as _dt
import html
from typing import Any

__all__ = ["render_dashboard"]

_W, _H, _PAD = 560, 160, 34


def _polyline(xs: list[float], ys: list[float], x0: float, x1: float, y0: float, y1: float, color: str) -> str:
    if not xs:
        return ""
    sx = (_W - 2 * _PAD) / max(x1 - x0, 1e-9)
    sy = (_H - 2 * _PAD) / max(y1 - y0, 1e-9)
    pts = " ".join(f"{_PAD + (x - x0) * sx:.1f},{_H - _PAD - (y - y0) * sy:.1f}" for x, y in zip(xs, ys))
    dots = (
        "".join(
            f'<circle cx="{_PAD + (x - x0) * sx:.1f}" cy="{_H - _PAD - (y - y0) * sy:.1f}" r="2" fill="{color}"/>'
            for x, y in zip(xs, ys)
        )
        if len(xs) <= 60
        else ""
    )
    return f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{pts}"/>{dots}'


def _frame(title: str, body: str, y_label: str, y0: float, y1: float, legend: list[tuple[str, str]]) -> str:
    leg = "".join(f'<tspan fill="{c}" dx="10">■ {html.escape(n)}</tspan>' for n, c in legend)
    return (
        f'<figure><svg role="img" aria-label="{html.escape(title)}" viewBox="0 0 {_W} {_H}" width="{_W}" '
        f'height="{_H}" xmlns="http://www.w3.org/2000/svg">'
        f'<rect x="{_PAD}" y="{_PAD}" width="{_W - 2 * _PAD}" height="{_H - 2 * _PAD}" fill="#fafafa" '
        f'stroke="#ccc"/>'
        f'<text x="{_PAD}" y="20" font-size="13" font-weight="bold">{html.escape(title)}</text>'
        f'<text x="{_W - _PAD}" y="31" font-size="10" text-anchor="end">{leg}</text>'
        f'<text x="4" y="{_PAD + 4}" font-size="10">{y1:.3g}</text>'
        f'<text x="4" y="{_H - _PAD}" font-size="10">{y0:.3g}</text>'
        f'<text x="{_PAD}" y="{_H - 8}" font-size="10">{html.escape(y_label)}</text>'
        f"{body}</svg></figure>"
    )


def _empty(title: str, why: str) -> str:
    return f'<figure class="empty"><figcaption><b>{html.escape(title)}</b>: {html.escape(why)}</figcaption></figure>'


def _t(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, tz=_dt.UTC).strftime("%H:%M:%S")


def _traffic_charts(series: list[list[float]]) -> list[str]:
    """Requests per 10 s, and the abstention and flag rates, over time."""
    if not series:
        return [_empty("Traffic", "no request yet")]
    xs = [r[0] for r in series]
    req = [r[1] for r in series]
    inputs = [max(r[2], 1) for r in series]
    abst = [r[3] / i for r, i in zip(series, inputs)]
    flag = [r[4] / i for r, i in zip(series, inputs)]
    x0, x1 = xs[0], max(xs[-1], xs[0] + 10)
    traffic = _frame(
        f"Traffic (requests per 10 s), {_t(x0)}–{_t(x1)} UTC",
        _polyline(xs, req, x0, x1, 0, max(req) or 1, "#1f77b4"),
        "time",
        0,
        max(req) or 1,
        [("requests", "#1f77b4")],
    )
    rates = _frame(
        "Abstention and flag rates (share of inputs)",
        _polyline(xs, abst, x0, x1, 0, 1, "#d62728") + _polyline(xs, flag, x0, x1, 0, 1, "#ff7f0e"),
        "time",
        0,
        1,
        [("abstained", "#d62728"), ("flagged", "#ff7f0e")],
    )
    return [traffic, rates]


def _drift_chart(drift: list[dict[str, Any]], drift_test: str) -> str:
    """The p-value of each drift window, the alpha line, and a mark on each alarm."""
    if not drift:
        return _empty("Drift", "no window of traffic completed yet")
    xs = [float(w["window"]) for w in drift]
    ps = [float(w["p_value"]) for w in drift]
    alpha = float(drift[-1].get("alpha", 0.01))
    alarm = [x for x, w in zip(xs, drift) if w["drift"]]
    x0, x1 = xs[0], max(xs[-1], xs[0] + 1)
    line = _polyline([x0, x1], [alpha, alpha], x0, x1, 0, 1, "#999")
    marks = "".join(
        f'<line x1="{_PAD + (a - x0) * (_W - 2 * _PAD) / (x1 - x0):.1f}" y1="{_PAD}" '
        f'x2="{_PAD + (a - x0) * (_W - 2 * _PAD) / (x1 - x0):.1f}" y2="{_H - _PAD}" stroke="#d62728" '
        f'stroke-opacity="0.35"/>'
        for a in alarm
    )
    return _frame(
        f"Drift ({drift_test}): p-value per window, {len(alarm)} alarm(s)",
        marks + line + _polyline(xs, ps, x0, x1, 0, 1, "#2ca02c"),
        "window",
        0,
        1,
        [("p-value", "#2ca02c"), (f"alpha {alpha:g}", "#999"), ("drift", "#d62728")],
    )


def _ood_chart(ood: dict[str, Any]) -> str:
    """The histogram of recent detector scores with the threshold."""
    if not ood.get("counts"):
        return _empty("Detector scores", "no scored input yet")
    counts, edges = ood["counts"], ood["edges"]
    top = max(counts) or 1
    bw = (_W - 2 * _PAD) / len(counts)
    bars = "".join(
        f'<rect x="{_PAD + i * bw:.1f}" y="{_H - _PAD - (c / top) * (_H - 2 * _PAD):.1f}" '
        f'width="{bw - 1:.1f}" height="{(c / top) * (_H - 2 * _PAD):.1f}" fill="#9467bd"/>'
        for i, c in enumerate(counts)
    )
    thr = ood.get("threshold")
    if thr is not None and edges[0] <= thr <= edges[-1]:
        x = _PAD + (thr - edges[0]) / max(edges[-1] - edges[0], 1e-9) * (_W - 2 * _PAD)
        bars += f'<line x1="{x:.1f}" y1="{_PAD}" x2="{x:.1f}" y2="{_H - _PAD}" stroke="#d62728" stroke-width="2"/>'
    return _frame(
        f"Detector scores (last {sum(counts)} inputs), {edges[0]:.3g}–{edges[-1]:.3g}",
        bars,
        "score",
        0,
        top,
        [("inputs", "#9467bd"), ("threshold", "#d62728")],
    )


def _client_row(c: dict[str, Any]) -> str:
    w = "" if c.get("w") is None else f"{c['w']:.3f}"
    at = "" if c.get("flagged_at") is None else str(c["flagged_at"])
    why = "over budget" if c.get("over_budget") else "extraction"
    return (
        f"<tr><td>{html.escape(str(c['client']))}</td><td>{c['queries']}</td><td>{w}</td><td>{at}</td>"
        f"<td>{why}</td></tr>"
    )


def render_dashboard(
    *,
    series: list[list[float]],
    drift: list[dict[str, Any]],
    drift_test: str,
    ood: dict[str, Any],
    clients: list[dict[str, Any]],
    calibration: dict[str, Any],
    audit: dict[str, int],
    spooled: int,
    store_up: bool,
) -> str:
    """The page: traffic, abstention/flag rates, drift p-values, detector scores, flagged clients, calibration."""
    charts = [*_traffic_charts(series), _drift_chart(drift, drift_test), _ood_chart(ood)]
    flagged = [c for c in clients if c.get("flagged") or c.get("over_budget")]
    rows = "".join(_client_row(c) for c in flagged)
    table = (
        f"<table><thead><tr><th>key id</th><th>queries</th><th>Shapiro-Wilk W</th><th>flagged at query</th>"
        f"<th>why</th></tr></thead><tbody>{rows or '<tr><td colspan=5>none</td></tr>'}</tbody></table>"
    )
    cal = "".join(f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>" for k, v in calibration.items())
    store = "up" if store_up else "DOWN (records go to the local spool)"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="30">
<title>bastion guard dashboard</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;color:#222}} figure{{margin:12px 0}}
.grid{{display:flex;flex-wrap:wrap;gap:8px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px}}
.empty{{border:1px dashed #ccc;padding:12px;width:520px}}</style></head>
<body><h1>bastion guard</h1>
<p id="summary">audit store: <b>{store}</b> · records committed {audit.get("committed", 0)},
spooled {audit.get("spooled", 0)},
replayed {audit.get("replayed", 0)}, waiting in spool {spooled} · clients flagged: {len(flagged)}</p>
<div class="grid">{"".join(charts)}</div>
<h2>Flagged clients</h2>{table}
<h2>Calibration</h2><ul>{cal}</ul>
</body></html>"""
