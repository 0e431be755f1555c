"""The audit report as one self-contained HTML file.

``write_html(report, path)`` turns the report dict (the layout in :mod:`bastion.audit.result`) into a
single page that opens offline in any browser: inline CSS (:mod:`.html_style`), every plot and gallery image embedded as a
``data:image/png`` URI, no scripts and no external URLs. The page reads top-down the way a reviewer
does: header (what was audited), overall verdict, the summary table (one row per probe), gates,
validity checks, then one section per probe with its parameters, metrics, plots, checks and a gallery
of adversarial examples.

Plots and gallery images come from :mod:`.figures` (matplotlib's object API and Pillow, imported only
when a report is written). Every string that comes from the report is escaped — model specs and error
messages are user-controlled. The file is written atomically (:func:`.store.write_atomic`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .figures import render_plot
from .html_gallery import example_html
from .html_style import CSS
from .html_text import data_uri as _data_uri
from .html_text import esc as _esc
from .html_text import num as _num
from .store import write_atomic

__all__ = ["write_html"]


_BADGE_CLASS = {
    "high": "bad",
    "fail": "bad",
    "error": "bad",
    "medium": "warn",
    "warn": "warn",
    "low": "good",
    "pass": "good",
    "ok": "good",
    "skipped": "muted",
    "n/a": "muted",
    "none": "muted",
}


# --------------------------------------------------------------------------------------------- formatting


def _compact(value: Any) -> str:
    """Parameter values (possibly nested dicts/lists) as short escaped text."""
    if isinstance(value, str):
        return _esc(value)
    if isinstance(value, float):
        return _num(value, 6)
    try:
        text = json.dumps(value, separators=(", ", ": "), default=str, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    return f'<span class="mono">{_esc(text)}</span>'


def _badge(value: Any) -> str:
    key = str(value) if value is not None else "n/a"
    return f'<span class="badge {_BADGE_CLASS.get(key, "muted")}">{_esc(key)}</span>'


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _short(fingerprint: Any) -> str:
    if not fingerprint:
        return "—"
    return f'<span class="mono" title="{_esc(fingerprint)}">{_esc(str(fingerprint)[:12])}</span>'


def _slug(name: Any, taken: set[str]) -> str:
    """An HTML id for a probe: its name with anything but [A-Za-z0-9_-] replaced, made unique."""
    base = re.sub(r"[^A-Za-z0-9_-]", "-", str(name or "probe")) or "probe"
    slug, i = base, 2
    while slug in taken:
        slug, i = f"{base}-{i}", i + 1
    taken.add(slug)
    return slug


def _kv_table(rows: dict[str, Any], value_fmt: Callable[[Any], str], head: tuple[str, str]) -> str:
    if not rows:
        return '<p class="note">none</p>'
    body = "".join(
        f'<tr><td><code>{_esc(k)}</code></td><td class="val">{value_fmt(v)}</td></tr>' for k, v in rows.items()
    )
    return (
        f'<table class="kv"><thead><tr><th>{head[0]}</th><th>{head[1]}</th></tr></thead><tbody>{body}</tbody></table>'
    )


# --------------------------------------------------------------------------------------------- plots


def _plots_html(plots: list[Any]) -> str:
    parts = []
    for plot in plots:
        if not isinstance(plot, dict):
            continue
        title = plot.get("title") or plot.get("id") or "plot"
        try:
            png = render_plot(plot)
        except (ValueError, TypeError) as e:  # malformed plot data: say so instead of losing the report
            parts.append(f'<p class="note">plot {_esc(title)} could not be drawn: {_esc(e)}</p>')
            continue
        alt = f"{plot.get('kind', 'plot')} plot: {title} ({plot.get('y_label', '')} vs {plot.get('x_label', '')})"
        parts.append(
            f'<figure class="plot"><img src="{_data_uri(png)}" alt="{_esc(alt)}" '
            f'data-plot="{_esc(plot.get("id"))}"></figure>'
        )
    return "".join(parts)


# --------------------------------------------------------------------------------------------- page parts


def _duration(report: dict[str, Any]) -> str:
    """`` · 95.2 s`` — for a resumed audit the whole audit's seconds (the probes finished before, as recorded,
    plus this run's) and this run's; a report without the split (older ones) shows what it has."""
    seconds, this_run = report.get("seconds"), report.get("seconds_this_run")
    text = f" · {_num(seconds, 3)} s" if isinstance(seconds, (int, float)) else ""
    if report.get("resumed"):
        ran = f": {_num(this_run, 3)} s in this run" if isinstance(this_run, (int, float)) else ""
        text += f" · resumed{ran}"
    return text


def _header(report: dict[str, Any]) -> str:
    settings, model, data = _dict(report.get("settings")), _dict(report.get("model")), _dict(report.get("data"))
    eps = settings.get("eps")
    eps_text = ", ".join(_num(e) for e in eps) if isinstance(eps, list) else _num(eps)
    rows = [
        (
            "model",
            f"<code>{_esc(model.get('spec') or settings.get('model'))}</code> · fingerprint "
            f"{_short(model.get('fingerprint'))}",
        ),
        (
            "data",
            f"<code>{_esc(data.get('spec') or settings.get('data'))}</code> · fingerprint "
            f"{_short(data.get('fingerprint'))}",
        ),
        ("profile", _esc(settings.get("profile"))),
        ("threat model", f"norm {_esc(settings.get('norm'))} · eps {eps_text or '—'}"),
        ("inputs", f"n = {_esc(settings.get('n'))} · seed {_esc(settings.get('seed'))}"),
        ("bastion", f"{_esc(report.get('bastion_version'))} · schema <code>{_esc(report.get('schema'))}</code>"),
        ("created", f"{_esc(report.get('created'))}{_duration(report)}"),
    ]
    meta = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    return f'<header class="report"><h1>bastion audit</h1><dl class="meta">{meta}</dl></header>'


def _verdict(report: dict[str, Any]) -> str:
    v = _dict(report.get("verdict"))
    boxes = [("risk", v.get("risk", "n/a")), ("validity", v.get("validity")), ("gates", v.get("gates", "none"))]
    inner = "".join(f'<div data-verdict="{k}"><span class="label">{k}</span>{_badge(val)}</div>' for k, val in boxes)
    return f'<section class="verdict" id="verdict" aria-label="verdict">{inner}</section>'


def _summary(probes: list[dict[str, Any]], slugs: list[str]) -> str:
    rows = []
    for p, slug in zip(probes, slugs):
        status = p.get("status") or "ok"
        reason = p.get("reason")
        first_line = str(reason).strip().splitlines()[0] if reason and str(reason).strip() else ""
        if len(first_line) > 200:
            first_line = first_line[:199] + "…"
        reason_html = f'<div class="reason">{_esc(first_line)}</div>' if first_line and status != "ok" else ""
        seconds = p.get("seconds")
        rows.append(
            f'<tr data-probe="{_esc(p.get("probe"))}"><td><a href="#probe-{slug}">'
            f"{_esc(p.get('title') or p.get('probe'))}</a></td><td>{_esc(p.get('threat'))}</td>"
            f"<td>{_esc(p.get('summary') or '')}</td>"
            f"<td>{_badge(p.get('risk', 'n/a'))}</td><td>{_badge(status)}{reason_html}</td>"
            f'<td class="num">{_num(seconds, 3) if isinstance(seconds, (int, float)) else "—"}</td></tr>'
        )
    body = "".join(rows) or '<tr><td colspan="6" class="note">no probes ran</td></tr>'
    return (
        '<h2>Summary</h2><table id="summary"><thead><tr><th>probe</th><th>threat</th><th>result</th>'
        f"<th>risk</th><th>status</th><th>seconds</th></tr></thead><tbody>{body}</tbody></table>"
    )


def _gates(report: dict[str, Any]) -> str:
    gates = [g for g in _list(report.get("gates")) if isinstance(g, dict)]
    if not gates:
        return ""
    rows = "".join(
        f'<tr data-gate="{_esc(g.get("expression"))}"><td><code>{_esc(g.get("expression"))}</code></td>'
        f'<td class="num">{_num(g.get("value"))}</td><td><code>{_esc(g.get("op"))} {_num(g.get("threshold"))}</code>'
        f"</td><td>{_badge('pass' if g.get('passed') else 'fail')}</td></tr>"
        for g in gates
    )
    return (
        '<h2>Gates</h2><table id="gates"><thead><tr><th>gate</th><th>measured</th><th>required</th>'
        f"<th>result</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _checks_table(checks: list[Any], table_id: str | None) -> str:
    checks = [c for c in checks if isinstance(c, dict)]
    rows = "".join(
        f'<tr data-check="{_esc(c.get("id"))}"><td>{_esc(c.get("title") or c.get("id"))}<div class="reason">'
        f"<code>{_esc(c.get('id'))}</code></div></td><td>{_badge(c.get('status', 'skipped'))}</td>"
        f"<td>{_esc(c.get('explanation') or '')}</td></tr>"
        for c in checks
    )
    rows = rows or '<tr><td colspan="3" class="note">no validity checks</td></tr>'
    id_attr = f' id="{table_id}"' if table_id else ""
    return (
        f"<table{id_attr}><thead><tr><th>check</th><th>status</th><th>explanation</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def _probe_section(p: dict[str, Any], slug: str) -> str:
    status = p.get("status") or "ok"
    parts = [
        f'<section class="probe" id="probe-{slug}" data-probe="{_esc(p.get("probe"))}">',
        f"<h2>{_esc(p.get('title') or p.get('probe'))} {_badge(p.get('risk', 'n/a'))} {_badge(status)}</h2>",
        f'<p class="sub">{_esc(p.get("threat"))} · probe <code>{_esc(p.get("probe"))}</code> · seed '
        f"{_esc(p.get('seed'))} · {_num(p.get('seconds'), 3)} s</p>",
    ]
    if p.get("summary"):
        parts.append(f"<p>{_esc(p.get('summary'))}</p>")
    if status != "ok" and p.get("reason"):
        heading = "error" if status == "error" else "skipped because"
        parts.append(f"<h3>{heading}</h3><pre>{_esc(p.get('reason'))}</pre>")
    parts.append("<h3>Parameters</h3>" + _kv_table(_dict(p.get("params")), _compact, ("parameter", "value")))
    metrics = _dict(p.get("metrics"))
    if metrics:
        parts.append("<h3>Metrics</h3>" + _kv_table(metrics, _num, ("metric", "value")))
    plots = _list(p.get("plots"))
    if plots:
        parts.append("<h3>Plots</h3>" + _plots_html(plots))
    checks = _list(p.get("checks"))
    if checks:
        parts.append("<h3>Validity checks</h3>" + _checks_table(checks, None))
    examples = [e for e in _list(p.get("examples")) if isinstance(e, dict)]
    if examples:
        parts.append('<h3>Examples</h3><div class="gallery">' + "".join(example_html(e) for e in examples) + "</div>")
    parts.append("</section>")
    return "".join(parts)


def _footer(report: dict[str, Any]) -> str:
    env = _dict(report.get("environment"))
    text = " · ".join(f"{_esc(k)} {_esc(v)}" for k, v in env.items())
    return f"<footer>Generated by bastion {_esc(report.get('bastion_version'))}. {text}</footer>"


def render_html(report: dict[str, Any]) -> str:
    """The report page as one HTML string (what :func:`write_html` writes)."""
    probes = [p for p in _list(report.get("probes")) if isinstance(p, dict)]
    taken: set[str] = set()
    slugs = [_slug(p.get("probe"), taken) for p in probes]
    metrics = _dict(report.get("metrics"))
    spec = _dict(report.get("model")).get("spec") or _dict(report.get("settings")).get("model")
    title = f"bastion audit: {spec}" if spec else "bastion audit"
    body = [
        _header(report),
        _verdict(report),
        _summary(probes, slugs),
        _gates(report),
        ("<h2>Headline metrics</h2>" + _kv_table(metrics, _num, ("metric", "value"))) if metrics else "",
        "<h2>Validity checks</h2>" + _checks_table(_list(report.get("checks")), "checks"),
        *(_probe_section(p, s) for p, s in zip(probes, slugs)),
        _footer(report),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body><main>"
        + "\n".join(b for b in body if b)
        + "</main></body></html>\n"
    )


def write_html(report: dict[str, Any], path: str | Path) -> Path:
    """Write the audit ``report`` (the dict layout of :mod:`bastion.audit.result`) to ``path`` as one
    self-contained HTML file and return the path. Missing or empty parts of the report are shown as such."""
    path = Path(path)
    write_atomic(path, render_html(report).encode("utf-8"))
    return path
