"""Evasion attacks: inputs crafted at inference time. White-box (gradient) attacks so far."""

from __future__ import annotations

from .apgd import APGD, APGDDLR, APGDT
from .cw import CarliniWagnerL2
from .deepfool import DeepFool
from .ensemble import Ensemble
from .eot import EOT
from .fgsm import FGSM
from .mifgsm import MIFGSM
from .pgd import PGD

__all__ = ["FGSM", "PGD", "MIFGSM", "APGD", "APGDDLR", "APGDT", "CarliniWagnerL2", "DeepFool", "Ensemble", "EOT"]
