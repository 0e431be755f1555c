"""White-box and black-box evasion attacks."""

from __future__ import annotations

from .fgsm import FGSM
from .mifgsm import MIFGSM
from .pgd import PGD

__all__ = ["FGSM", "PGD", "MIFGSM"]
