"""The built-in probes, registered on import (in the order profiles run them)."""

from . import (
    backdoor,
    blackbox,
    certification,
    detection,
    encrypted,
    extraction,
    federated,
    inversion,
    membership,
    minnorm,
    model,
    noise,
    patch,
    poisoning,
    privacy,
    whitebox,
)

__all__ = [
    "backdoor",
    "blackbox",
    "certification",
    "detection",
    "encrypted",
    "extraction",
    "federated",
    "inversion",
    "membership",
    "minnorm",
    "model",
    "noise",
    "patch",
    "poisoning",
    "privacy",
    "whitebox",
]
