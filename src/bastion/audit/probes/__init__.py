"""The built-in probes, registered on import (in the order profiles run them)."""

from . import blackbox, certification, detection, minnorm, model, noise, patch, whitebox  # noqa: F401

__all__ = ["model", "whitebox", "minnorm", "blackbox", "noise", "patch", "certification", "detection"]
