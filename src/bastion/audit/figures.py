"""Figures of the audit report as PNG bytes: plots (matplotlib's object API — ``Figure`` and the Agg
canvas, never ``pyplot``'s global state) and the gallery's clean / adversarial / perturbation images
(Pillow). Both libraries are imported only when a figure is drawn."""

from __future__ import annotations

import io
import math
from typing import Any

__all__ = ["image_pngs", "render_plot"]

_GALLERY_TARGET_PX = 128  # images are upscaled (nearest neighbour) to about this many pixels on the long side


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _floats(values: Any) -> list[float]:
    out = []
    for v in _list(values):
        try:
            out.append(float(v) if v is not None else math.nan)
        except (TypeError, ValueError):
            out.append(math.nan)
    return out


def _is_fraction_axis(label: str, ys: list[float]) -> bool:
    """Accuracy-like axes (labelled so, all values in [0, 1]) are drawn on a fixed [0, 1] scale."""
    words = ("accuracy", "rate", "fraction", "probability", "share")
    finite = [y for y in ys if math.isfinite(y)]
    return any(w in label.lower() for w in words) and all(0.0 <= y <= 1.0 for y in finite)


def _draw_lines(ax: Any, plot: dict[str, Any], series: list[dict[str, Any]]) -> tuple[int, list[float]]:
    """Line plot: one line per series; log x axis on request. Returns (lines drawn, the y values)."""
    from matplotlib.ticker import NullFormatter

    drawn, all_y = 0, []
    for s in series:
        xs, ys = _floats(s.get("x")), _floats(s.get("y"))
        n = min(len(xs), len(ys))
        if n == 0:
            continue
        ax.plot(xs[:n], ys[:n], marker="o", markersize=4, linewidth=1.6, label=str(s.get("name") or ""))
        all_y += ys[:n]
        drawn += 1
    xs_all = sorted({x for s in series for x in _floats(s.get("x")) if math.isfinite(x)})
    if plot.get("x_log") and xs_all and xs_all[0] > 0:
        ax.set_xscale("log")
        if len(xs_all) <= 10:  # label the measured points plainly instead of powers of ten
            ax.set_xticks(xs_all, [f"{x:g}" for x in xs_all])
            ax.xaxis.set_minor_formatter(NullFormatter())
    return drawn, all_y


def _draw_hists(ax: Any, series: list[dict[str, Any]]) -> int:
    """Histograms of each series' raw values ``x`` on shared bins (at most 40). Returns the number drawn."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    data = [(str(s.get("name") or ""), [v for v in _floats(s.get("x")) if math.isfinite(v)]) for s in series]
    data = [(name, vals) for name, vals in data if vals]
    if not data:
        return 0
    pooled = np.concatenate([np.asarray(vals) for _, vals in data])
    edges = np.histogram_bin_edges(pooled, bins="auto")
    if len(edges) > 41:
        edges = np.histogram_bin_edges(pooled, bins=40)
    for name, vals in data:
        ax.hist(
            vals,
            bins=edges.tolist(),
            alpha=0.55 if len(data) > 1 else 0.85,
            label=name,
            edgecolor="white",
            linewidth=0.5,
        )
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return len(data)


def _draw_bars(ax: Any, plot: dict[str, Any], series: list[dict[str, Any]]) -> tuple[int, list[float]]:
    """Grouped bars at the category positions. Returns (series drawn, the y values)."""
    categories = [str(c) for c in _list(plot.get("categories"))]
    usable = [s for s in series if _list(s.get("y"))]
    width = 0.8 / max(len(usable), 1)
    all_y: list[float] = []
    for i, s in enumerate(usable):
        ys = _floats(s.get("y"))
        xs = _floats(s.get("x")) or [float(j) for j in range(len(ys))]
        if len(xs) != len(ys):
            xs = [float(j) for j in range(len(ys))]
        offset = (i - (len(usable) - 1) / 2) * width
        ax.bar(
            [x + offset for x in xs],
            [0.0 if not math.isfinite(y) else y for y in ys],
            width=width,
            label=str(s.get("name") or ""),
        )
        all_y += ys
    if categories:
        ax.set_xticks(range(len(categories)))
        ax.set_xticklabels(
            categories, rotation=30 if len(categories) > 6 else 0, ha="right" if len(categories) > 6 else "center"
        )
    return len(usable), all_y


def render_plot(plot: dict[str, Any]) -> bytes:
    """Draw one :class:`~bastion.audit.result.Plot` (as a dict) to PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kind = plot.get("kind")
    series = [s for s in _list(plot.get("series")) if isinstance(s, dict)]
    x_label, y_label = str(plot.get("x_label") or ""), str(plot.get("y_label") or "")
    fig = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    drawn = 0
    all_y: list[float] = []
    if kind == "line":
        drawn, all_y = _draw_lines(ax, plot, series)
    elif kind == "hist":
        drawn = _draw_hists(ax, series)
    elif kind == "bar":
        drawn, all_y = _draw_bars(ax, plot, series)
    if drawn == 0:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="#59636e")
        ax.set_xticks([])
        ax.set_yticks([])
    elif kind in ("line", "bar") and _is_fraction_axis(y_label, all_y):
        ax.set_ylim(0.0, 1.02)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(str(plot.get("title") or ""), fontsize=11)
    ax.grid(True, alpha=0.3)
    if drawn > 1 or (drawn == 1 and any(s.get("name") for s in series)):
        ax.legend(fontsize=8, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _to_png(rgb_or_gray: Any, scale: int) -> bytes:
    from PIL import Image

    img = Image.fromarray(rgb_or_gray)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def image_pngs(clean: Any, adv: Any, bounds: tuple[float, float]) -> tuple[bytes, bytes, bytes, float, int]:
    """PNG bytes of clean, adversarial and the signed perturbation; its max |diff|; the upscale factor."""
    import numpy as np

    lo, hi = bounds
    span = hi - lo if hi > lo else 1.0

    def to_uint8(a: Any) -> Any:
        u = np.clip((a - lo) / span, 0.0, 1.0)
        u = np.round(u * 255).astype(np.uint8)
        return u[0] if u.shape[0] == 1 else np.ascontiguousarray(u.transpose(1, 2, 0))

    diff = adv - clean
    strongest = np.take_along_axis(diff, np.abs(diff).argmax(axis=0)[None], axis=0)[0]  # signed, per pixel
    m = float(np.abs(strongest).max()) if strongest.size else 0.0
    t = strongest / m if m > 0 else np.zeros_like(strongest)
    grey, red, blue = np.array([232.0, 232.0, 232.0]), np.array([200.0, 30.0, 30.0]), np.array([30.0, 70.0, 210.0])
    pos = np.clip(t, 0, 1)[..., None]
    neg = np.clip(-t, 0, 1)[..., None]
    colour = grey * (1 - pos - neg) + red * pos + blue * neg
    diff_img = np.round(colour).astype(np.uint8)
    h, w = clean.shape[1], clean.shape[2]
    scale = max(1, _GALLERY_TARGET_PX // max(h, w, 1))
    return _to_png(to_uint8(clean), scale), _to_png(to_uint8(adv), scale), _to_png(diff_img, scale), m, scale
