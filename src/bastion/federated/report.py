"""The report of a federated attack × aggregator matrix: ``matrix.json`` and a self-contained ``index.html``.

:func:`matrix_table` groups the runs' result dicts (as :func:`~bastion.federated.simulate.simulate` returns
them) by setting — clients, Dirichlet alpha (None: IID), malicious share — and, within one, by attack ×
aggregator; each cell sets the run's final accuracy against the same aggregator's attack-free run (``none``)
in the same setting. :func:`render_matrix_html` draws it: heat-maps of final accuracy and of backdoor success,
and per-round accuracy curves as hand-drawn inline SVG. :func:`write_matrix_report` writes both files.
Pure Python: no Flower, no torch, no JavaScript, nothing loaded from outside the page.
"""

from __future__ import annotations

import html
import json
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError

__all__ = ["matrix_table", "render_matrix_html", "write_matrix_report"]

Result = Mapping[str, Any]
Key = tuple[Any, Any, Any]  # (clients, alpha, malicious)
Cells = dict[tuple[str, str], Result]  # (attack, aggregator) -> result
CLEAN = "none"
DEFAULT_TITLE = "Federated learning: attacks × aggregators"


# ----------------------------------------------------------------------------------------------- the table


def _num(x: Any) -> float | None:
    """``x`` as a finite float; None when missing, not a number, NaN or infinite."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        return None
    try:
        f = float(x)
    except (OverflowError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _spec(r: Any) -> Mapping[str, Any]:
    if not isinstance(r, Mapping) or not isinstance(r.get("spec"), Mapping):
        raise UsageError("each federated result must be a dict with a 'spec' dict, as bastion's simulation returns")
    return r["spec"]


def _key(r: Result) -> Key:
    s = _spec(r)
    return (s.get("clients"), s.get("alpha"), s.get("malicious"))


def _cell_key(r: Result) -> tuple[str, str]:
    s = _spec(r)
    return (str(s.get("attack", CLEAN)), str(s.get("aggregator", "?")))


def _rounds(r: Result) -> list[Mapping[str, Any]]:
    rounds = r.get("rounds")
    return [x for x in rounds if isinstance(x, Mapping)] if isinstance(rounds, list) else []


def _group(results: Sequence[Result]) -> dict[Key, Cells]:
    """Results by setting (in order of first appearance), then by (attack, aggregator); a later run replaces.

    An attack-free run has no malicious clients whatever its ``malicious`` share says, so one whose share
    matches no attacked setting of its clients and alpha is the clean run of each of those instead.
    """
    attacked = list(dict.fromkeys(_key(r) for r in results if _cell_key(r)[0] != CLEAN))
    groups: dict[Key, Cells] = {}
    for r in results:
        key, cell = _key(r), _cell_key(r)
        near = [k for k in attacked if k[:2] == key[:2]]
        if cell[0] != CLEAN or key in attacked or not near:
            groups.setdefault(key, {})[cell] = r
        else:
            for k in near:  # an exact-share clean run, before or after, wins
                groups.setdefault(k, {}).setdefault(cell, r)
    return groups


def _cell(attack: str, aggregator: str, r: Result, clean: Result | None) -> dict[str, Any]:
    final = _num(r.get("final_accuracy"))
    clean_acc = None if clean is None else _num(clean.get("final_accuracy"))
    weights = [w for w in (_num(x.get("malicious_weight")) for x in _rounds(r)) if w is not None]
    return {
        "attack": attack,
        "aggregator": aggregator,
        "final_accuracy": final,
        "clean_accuracy": clean_acc,
        "drop": None if final is None or clean_acc is None else clean_acc - final,
        "backdoor_asr": _num(r.get("backdoor_asr")),
        "malicious_weight": sum(weights) / len(weights) if weights else None,
        "seconds": _num(r.get("seconds")),
    }


def _setting(key: Key, cells: Cells) -> dict[str, Any]:
    attacks = list(dict.fromkeys(a for a, _ in cells))
    if CLEAN in attacks:
        attacks = [CLEAN] + [a for a in attacks if a != CLEAN]
    aggregators = list(dict.fromkeys(g for _, g in cells))
    rows = [_cell(a, g, cells[a, g], cells.get((CLEAN, g))) for a in attacks for g in aggregators if (a, g) in cells]
    clients, alpha, malicious = key
    return {
        "clients": clients,
        "alpha": alpha,
        "malicious": malicious,
        "attacks": attacks,
        "aggregators": aggregators,
        "cells": rows,
    }


def matrix_table(results: Sequence[Result]) -> dict[str, Any]:
    """The matrix as a JSON-ready dict: ``{"settings": [...]}``, one entry per (clients, alpha, malicious).

    Each setting lists its attacks (``none`` first, then as first seen), its aggregators (as first seen) and
    one cell per run: final accuracy, the same aggregator's attack-free accuracy in that setting
    (``clean_accuracy``, None without such a run), ``drop`` = clean − final, backdoor success (None outside
    backdoor runs), the malicious clients' mean aggregation weight over the rounds, and the run's seconds.
    """
    return {"settings": [_setting(k, cells) for k, cells in _group(results).items()]}


# ----------------------------------------------------------------------------------------------- formatting

_E = html.escape
_RED, _YELLOW, _GREEN = (248, 105, 107), (255, 235, 132), (99, 190, 123)
_PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f"]
_CSS = """
body { margin:0; background:#f6f8fa; color:#1f2328; font:15px/1.45 system-ui, -apple-system, "Segoe UI",
  Roboto, Arial, sans-serif; }
main { max-width:1180px; margin:0 auto; padding:24px 24px 48px; }
header, section { background:#fff; border:1px solid #d1d9e0; border-radius:8px; padding:16px 22px;
  margin-bottom:20px; }
h1 { font-size:1.45rem; margin:0 0 10px; } h2 { font-size:1.15rem; margin:0 0 8px; }
h3 { font-size:.9rem; margin:18px 0 6px; color:#59636e; text-transform:uppercase; letter-spacing:.04em; }
dl { display:grid; grid-template-columns:max-content 1fr; gap:3px 16px; margin:0; }
dt { color:#59636e; } dd { margin:0; }
table.heat { border-collapse:collapse; margin:4px 0; }
table.heat th, table.heat td { border:1px solid #d1d9e0; padding:6px 10px; }
table.heat th { background:#f6f8fa; font-size:.85rem; }
table.heat th.row { text-align:left; } table.heat td { text-align:center; min-width:84px;
  font-variant-numeric:tabular-nums; }
table.heat td.missing { color:#8c959f; background:#fff; }
td .sub { display:block; font-size:.78rem; color:#3d444d; }
p.note { color:#59636e; font-size:.85rem; margin:4px 0 0; }
.charts { display:flex; flex-wrap:wrap; gap:12px; }
figure { margin:0; } figcaption { font-size:.85rem; color:#59636e; }
"""


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def _points(x: float) -> str:
    """A change in percentage points, with a real minus sign."""
    v = 100 * x
    return "±0.0" if abs(v) < 0.05 else f"{v:+.1f}".replace("-", "−")


def _heat_colour(goodness: float) -> str:
    """Red (0) → yellow (0.5) → green (1), as a CSS hex colour."""
    g = min(1.0, max(0.0, goodness))
    lo, hi, t = (_RED, _YELLOW, 2 * g) if g < 0.5 else (_YELLOW, _GREEN, 2 * g - 1)
    r, gr, b = (round(a + (z - a) * t) for a, z in zip(lo, hi))
    return f"#{r:02x}{gr:02x}{b:02x}"


def _setting_label(s: Mapping[str, Any]) -> str:
    split = "IID" if s["alpha"] is None else f"Dirichlet α = {s['alpha']}"
    share = _num(s["malicious"])
    bad = f"{100 * share:g} % malicious" if share is not None else f"malicious {s['malicious']}"
    return f"{s['clients']} clients · {split} · {bad}"


def _recipe(local: Any) -> str:
    if not isinstance(local, Mapping):
        return str(local)
    keys = ("epochs", "batch_size", "lr", "momentum")
    return ", ".join(f"{k.replace('_', ' ')} {local[k]}" for k in keys if k in local) or json.dumps(local)


def _header(results: Sequence[Result], title: str) -> str:
    fields: list[tuple[str, Callable[[Mapping[str, Any]], str]]] = [
        ("architecture", lambda s: str(s.get("arch"))),
        ("data", lambda s: str(s.get("data"))),
        ("rounds", lambda s: str(s.get("rounds"))),
        ("local training", lambda s: _recipe(s.get("local"))),
        ("seed", lambda s: str(s.get("seed"))),
    ]
    rows = [(name, list(dict.fromkeys(get(_spec(r)) for r in results))) for name, get in fields]
    seconds = sum(_num(r.get("seconds")) or 0.0 for r in results)
    rows.append(("runs", [f"{len(results)} ({seconds:.0f} s of training)"]))
    items = "".join(f"<dt>{_E(name)}</dt><dd>{_E(' | '.join(values))}</dd>" for name, values in rows)
    return f"<header><h1>{_E(title)}</h1><dl>{items}</dl></header>"


def _tooltip(c: Mapping[str, Any]) -> str:
    parts = [f"{c['attack']} × {c['aggregator']}: accuracy {_pct(c['final_accuracy'])}"]
    if c["clean_accuracy"] is not None:
        parts.append(f"without attack {_pct(c['clean_accuracy'])}")
    if c["backdoor_asr"] is not None:
        parts.append(f"backdoor success {_pct(c['backdoor_asr'])}")
    if c["malicious_weight"] is not None:
        parts.append(f"mean malicious weight {c['malicious_weight']:.3f}")
    if c["seconds"] is not None:
        parts.append(f"{c['seconds']:.1f} s")
    return "; ".join(parts)


def _accuracy_td(c: Mapping[str, Any]) -> str:
    acc = c["final_accuracy"]
    if acc is None:
        return '<td class="missing">—</td>'
    drop = c["drop"]
    sub = f'<span class="sub">{_E(_points(-drop))}</span>' if drop is not None and c["attack"] != CLEAN else ""
    style = f"background:{_heat_colour(acc)}"
    return f'<td style="{style}" title="{_E(_tooltip(c))}">{_E(_pct(acc))}{sub}</td>'


def _asr_td(c: Mapping[str, Any]) -> str:
    asr = c["backdoor_asr"]
    if asr is None:
        return '<td class="missing">—</td>'
    return f'<td style="background:{_heat_colour(1 - asr)}" title="{_E(_tooltip(c))}">{_E(_pct(asr))}</td>'


def _heat_table(
    s: Mapping[str, Any], attacks: Sequence[str], td: Callable[[Mapping[str, Any]], str], corner: str
) -> str:
    by = {(c["attack"], c["aggregator"]): c for c in s["cells"]}
    head = f'<th class="row">{_E(corner)}</th>' + "".join(f"<th>{_E(g)}</th>" for g in s["aggregators"])
    body = []
    for a in attacks:
        tds = "".join(td(by[a, g]) if (a, g) in by else '<td class="missing">—</td>' for g in s["aggregators"])
        body.append(f'<tr><th class="row">{_E(a)}</th>{tds}</tr>')
    return f'<table class="heat"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


# ----------------------------------------------------------------------------------------------- the curves

_W, _H, _LEFT, _TOP, _PW, _PH = 440, 210, 38, 10, 262, 170


def _curve(r: Result) -> list[tuple[float, float]]:
    pts = []
    for i, x in enumerate(_rounds(r)):
        acc, rnd = _num(x.get("accuracy")), _num(x.get("round"))
        if acc is not None:
            pts.append((i if rnd is None else rnd, min(1.0, max(0.0, acc))))
    return pts


def _chart(attack: str, aggregators: Sequence[str], cells: Cells) -> str:
    """One attack's accuracy per round, one polyline per aggregator, as an inline SVG with its legend."""
    curves = [(i, g, _curve(cells[attack, g])) for i, g in enumerate(aggregators) if (attack, g) in cells]
    last = max((x for _, _, pts in curves for x, _ in pts), default=1.0) or 1.0
    bottom = _TOP + _PH

    def px(x: float, y: float) -> tuple[str, str]:
        return f"{_LEFT + _PW * x / last:.1f}", f"{_TOP + _PH * (1 - y):.1f}"

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H + 20}" viewBox="0 0 {_W} {_H + 20}" '
        f'role="img" aria-label="{_E(f"accuracy per round under {attack}")}" font-size="10" font-family="sans-serif">',
        f"<title>{_E(f'accuracy per round under {attack}')}</title>",
    ]
    for y in (0.0, 0.25, 0.5, 0.75, 1.0):
        yy = _TOP + _PH * (1 - y)
        out.append(f'<line x1="{_LEFT}" x2="{_LEFT + _PW}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#d1d9e0"/>')
        out.append(f'<text x="{_LEFT - 4}" y="{yy + 3:.1f}" text-anchor="end" fill="#59636e">{y:.2f}</text>')
    for x in sorted({0.0, round(last / 2), last}):
        out.append(
            f'<text x="{_LEFT + _PW * x / last:.1f}" y="{bottom + 13}" text-anchor="middle" fill="#59636e">{x:g}</text>'
        )
    out.append(f'<text x="{_LEFT + _PW / 2}" y="{bottom + 27}" text-anchor="middle" fill="#59636e">round</text>')
    for row, (i, g, pts) in enumerate(curves):
        colour = _PALETTE[i % len(_PALETTE)]
        if pts:
            xy = [px(x, y) for x, y in pts]
            points = " ".join(f"{x},{y}" for x, y in xy)
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{points}"/>')
            out.extend(f'<circle cx="{x}" cy="{y}" r="1.8" fill="{colour}"/>' for x, y in xy)
        ly = _TOP + 8 + 15 * row
        lx = _LEFT + _PW + 14
        out.append(f'<line x1="{lx}" x2="{lx + 16}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="2.5"/>')
        out.append(f'<text x="{lx + 21}" y="{ly + 3.5}" fill="#1f2328">{_E(g)}</text>')
    out.append("</svg>")
    return "".join(out)


# ----------------------------------------------------------------------------------------------- the page


def _section(s: Mapping[str, Any], cells: Cells) -> str:
    parts = [f"<section><h2>{_E(_setting_label(s))}</h2>", "<h3>Final accuracy</h3>"]
    parts.append(_heat_table(s, s["attacks"], _accuracy_td, "attack \\ aggregator"))
    parts.append(
        '<p class="note">Test accuracy after the last round (red low, green high); below it the change against '
        "the same aggregator's run without attack, in percentage points. — : no run.</p>"
    )
    backdoor = [a for a in s["attacks"] if any(c["attack"] == a and c["backdoor_asr"] is not None for c in s["cells"])]
    if backdoor:
        parts.append("<h3>Backdoor success</h3>")
        parts.append(_heat_table(s, backdoor, _asr_td, "attack \\ aggregator"))
        parts.append('<p class="note">Share of triggered test inputs classified as the target (red high).</p>')
    parts.append('<h3>Accuracy per round</h3><div class="charts">')
    for a in s["attacks"]:
        parts.append(f"<figure><figcaption>{_E(a)}</figcaption>{_chart(a, s['aggregators'], cells)}</figure>")
    parts.append("</div></section>")
    return "".join(parts)


def render_matrix_html(results: Sequence[Result], title: str = DEFAULT_TITLE) -> str:
    """The matrix as one self-contained HTML page: inline CSS and SVG, no scripts, no external assets."""
    groups = _group(results)
    sections = [_section(_setting(k, cells), cells) for k, cells in groups.items()]
    body = _header(results, title) + ("".join(sections) or "<section><p>No runs.</p></section>")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_E(title)}</title><style>{_CSS}</style></head>\n<body><main>{body}</main></body></html>\n"
    )


def _finite(x: Any) -> Any:
    """``x`` with every non-finite float (NaN, ±inf) replaced by None, for strict JSON."""
    if isinstance(x, bool | int | float | str) or x is None:
        return x if not isinstance(x, float) or math.isfinite(x) else None
    if isinstance(x, numbers.Integral):  # numpy integers and floats: plain JSON numbers
        return int(x)
    if isinstance(x, numbers.Real):
        return _num(x)
    if isinstance(x, Mapping):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def write_matrix_report(results: Sequence[Result], out_dir: str | Path) -> dict[str, Path]:
    """Write ``matrix.json`` (the results and :func:`matrix_table`) and ``index.html`` into ``out_dir``.

    Returns ``{"json": path, "html": path}``. Raises :class:`~bastion.errors.UsageError` when ``results`` is empty.
    """
    results = list(results)
    if not results:
        raise UsageError("no federated results to report: the matrix ran no runs")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    doc = _finite({"results": results, "table": matrix_table(results)})
    paths = {"json": out / "matrix.json", "html": out / "index.html"}
    paths["json"].write_text(json.dumps(doc, indent=2, allow_nan=False, default=str) + "\n", encoding="utf-8")
    paths["html"].write_text(render_matrix_html(results), encoding="utf-8")
    return paths
