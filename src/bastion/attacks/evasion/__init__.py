"""Evasion attacks: inputs crafted at inference time.

White-box (gradients): FGSM, PGD, MI-FGSM, APGD (CE, DLR, targeted), C&W-L2, DeepFool, ensembles.
Score-based black-box: Square, SimBA, the random-noise baseline. Decision-based: HopSkipJump,
Boundary. Transfer from a surrogate, constrained tabular search, universal adversarial patches.
"""

from __future__ import annotations

from .apgd import APGD, APGDDLR, APGDT
from .boundary import BoundaryAttack
from .constraints import FeatureConstraints
from .cw import CarliniWagnerL2
from .deepfool import DeepFool
from .ensemble import Ensemble
from .eot import EOT
from .fgsm import FGSM
from .hopskipjump import HopSkipJump
from .mifgsm import MIFGSM
from .noise import RandomNoise
from .patch import AdversarialPatch
from .pgd import PGD
from .simba import SimBA
from .square import Square
from .tabular import ConstrainedAttack
from .transfer import TransferAttack, train_surrogate

__all__ = [
    "APGD",
    "APGDDLR",
    "APGDT",
    "EOT",
    "FGSM",
    "MIFGSM",
    "PGD",
    "AdversarialPatch",
    "BoundaryAttack",
    "CarliniWagnerL2",
    "ConstrainedAttack",
    "DeepFool",
    "Ensemble",
    "FeatureConstraints",
    "HopSkipJump",
    "RandomNoise",
    "SimBA",
    "Square",
    "TransferAttack",
    "train_surrogate",
]
