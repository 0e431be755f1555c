"""Text for the report page: every value escaped (model specs and error messages are user-controlled),
numbers compact, images as ``data:`` URIs (the page loads nothing from outside)."""

from __future__ import annotations

import base64
import html
import math
import re
from typing import Any

__all__ = ["data_uri", "esc", "num"]

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def esc(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute; None becomes an em dash."""
    if value is None:
        return "—"
    return html.escape(_CONTROL.sub("", str(value)), quote=True)


def num(value: Any, digits: int = 4) -> str:
    """A compact number: ints as is, floats with ``digits`` significant digits, anything else escaped."""
    if isinstance(value, bool) or value is None:
        return esc(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return esc(value)
        return f"{value:.{digits}g}"
    return esc(value)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
