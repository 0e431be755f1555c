"""The report's gallery: each example as a caption and its clean / adversarial / perturbation images (images
upscaled, the perturbation signed in colour), or a table of the changed features (tabular records)."""

from __future__ import annotations

from typing import Any

from .figures import image_pngs
from .html_text import data_uri as _data_uri
from .html_text import esc as _esc
from .html_text import num as _num

__all__ = ["example_html"]

_MAX_CHANGED_FEATURES = 12


def _index(ex: dict[str, Any]) -> int | None:
    """The audited input's index; ``None`` when the example has no valid one (a report written before
    indices were kept, or a probe that has none) — then the captions name no number."""
    index = ex.get("index")
    return index if isinstance(index, int) and not isinstance(index, bool) and index >= 0 else None


def _input_name(ex: dict[str, Any]) -> str:
    index = _index(ex)
    return "input" if index is None else f"input #{index}"


def _example_caption(ex: dict[str, Any]) -> str:
    eps = ex.get("eps")
    eps_text = f", eps {_num(eps)}" if isinstance(eps, (int, float)) and not isinstance(eps, bool) else ""
    if isinstance(eps, (int, float)) and eps_text and ex.get("norm") == "patch":  # a patch's eps: its share
        eps_text = f", covering {float(eps):.1%} of the image"
    changed = ex.get("pred_adv") != ex.get("pred_clean")
    outcome = "fooled" if changed else "not fooled"
    index = _index(ex)
    head = "an input" if index is None else f"#{index}"
    return (
        f"<strong>{_esc(head)}</strong>: label {_esc(ex.get('label'))} → prediction "
        f"{_esc(ex.get('pred_adv'))} (clean prediction {_esc(ex.get('pred_clean'))}, {outcome}) · attack "
        f"<code>{_esc(ex.get('attack'))}</code> · norm {_esc(ex.get('norm'))}{eps_text} · perturbation size "
        f"{_num(ex.get('perturbation'))}"
    )


def _bounds(ex: dict[str, Any]) -> tuple[float, float]:
    raw = ex.get("bounds") or (0.0, 1.0)
    try:
        return (float(raw[0]), float(raw[1]))
    except (TypeError, ValueError, IndexError):
        return (0.0, 1.0)


def _image_example(ex: dict[str, Any], clean: Any, adv: Any, caption: str) -> str:
    """Clean, adversarial and perturbation images side by side, upscaled, with a colour legend."""
    png_clean, png_adv, png_diff, m, scale = image_pngs(clean, adv, _bounds(ex))
    w, h = clean.shape[2] * scale, clean.shape[1] * scale
    name = _input_name(ex)

    def fig(png: bytes, alt: str, cap: str) -> str:
        return (
            f'<figure><img src="{_data_uri(png)}" width="{w}" height="{h}" alt="{_esc(alt)}">'
            f"<figcaption>{cap}</figcaption></figure>"
        )

    diff_cap = "perturbation (adv − clean)" if m > 0 else "perturbation: none"
    legend = (
        f"Perturbation colours: red = increase, blue = decrease, grey = unchanged; scaled to max |Δ| = {_num(m)}."
        if m > 0
        else "The adversarial input is identical to the clean one."
    )
    triple = (
        fig(
            png_clean,
            f"clean {name}, label {ex.get('label')}",
            f"clean · label {_esc(ex.get('label'))} → {_esc(ex.get('pred_clean'))}",
        )
        + fig(
            png_adv, f"adversarial {name}, predicted {ex.get('pred_adv')}", f"adversarial → {_esc(ex.get('pred_adv'))}"
        )
        + fig(png_diff, f"perturbation of {name}", _esc(diff_cap))
    )
    return (
        f'<div class="example" data-example="{_esc(ex.get("index"))}">{caption}<div class="triple">{triple}</div>'
        f'<p class="reason">{_esc(legend)}</p></div>'
    )


def _record_example(ex: dict[str, Any], clean: Any, adv: Any, caption: str) -> str:
    """A tabular record: the features that changed, largest change first (at most 12 shown)."""
    import numpy as np

    delta = adv - clean
    changed = [int(i) for i in np.argsort(-np.abs(delta), kind="stable") if abs(delta[i]) > 1e-9]
    if not changed:
        body = '<p class="note">no feature changed</p>'
    else:
        shown = changed[:_MAX_CHANGED_FEATURES]
        rows = "".join(
            f'<tr><td class="num">{i}</td><td class="num">{_num(float(clean[i]))}</td>'
            f'<td class="num">{_num(float(adv[i]))}</td><td class="num">{float(delta[i]):+.4g}</td></tr>'
            for i in shown
        )
        more = f"; the {len(shown)} largest changes shown" if len(changed) > len(shown) else ""
        body = (
            f'<p class="sub">{len(changed)} of {clean.size} features changed{more}.</p>'
            '<table class="kv"><thead><tr><th>feature</th><th>clean</th><th>adversarial</th><th>delta</th>'
            "</tr>"
            f"</thead><tbody>{rows}</tbody></table>"
        )
    return f'<div class="example" data-example="{_esc(ex.get("index"))}">{caption}{body}</div>'


def example_html(ex: dict[str, Any]) -> str:
    """One gallery entry (an :class:`~.result.Example` as a dict); what cannot be drawn is said, not dropped."""
    import numpy as np

    caption = f'<div class="caption">{_example_caption(ex)}</div>'
    try:
        clean = np.asarray(ex.get("clean"), dtype=float)
        adv = np.asarray(ex.get("adversarial"), dtype=float)
    except (TypeError, ValueError):
        return f'<div class="example">{caption}<p class="note">input could not be read as numbers</p></div>'
    if clean.shape != adv.shape or clean.size == 0:
        return (
            f'<div class="example">{caption}<p class="note">no input to show (shapes {_esc(clean.shape)} and '
            f"{_esc(adv.shape)})</p></div>"
        )
    if clean.ndim == 2:  # (H, W): a single-channel image without its channel axis
        clean, adv = clean[None], adv[None]
    if clean.ndim == 3 and clean.shape[0] in (1, 3):
        return _image_example(ex, clean, adv, caption)
    if clean.ndim == 1:
        return _record_example(ex, clean, adv, caption)
    return f'<div class="example">{caption}<p class="note">input of shape {_esc(clean.shape)} not rendered</p></div>'
