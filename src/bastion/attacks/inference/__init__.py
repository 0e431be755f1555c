"""Inference attacks: what a model gives away about its training data.

- :mod:`.membership` — was this record in the training set? (loss, entropy, LiRA, RMIA, shadow models)
"""

from __future__ import annotations

from . import membership

__all__ = ["membership"]
