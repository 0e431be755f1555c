"""Exceptions raised by bastion.

Every error a user can cause derives from :class:`BastionError` and carries a message that says
what to change. The CLI turns :class:`UsageError` into exit code 2 with a one-line message; it is raised
where an input is checked. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["BastionError", "MissingExtraError", "UnsafeModelError", "UsageError"]


class BastionError(Exception):
    """Base class for bastion's own errors."""


class UsageError(BastionError, ValueError):
    """The caller passed something invalid: an argument, a file, a name. Exit code 2 in the CLI."""


class UnsafeModelError(UsageError):
    """A model file would execute embedded code when loaded (e.g. an unrestricted pickle)."""


class MissingExtraError(BastionError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, extra: str, package: str) -> None:
        super().__init__(
            f"this feature needs the optional package '{package}': install it with  pip install 'bastion[{extra}]'"
        )
        self.extra = extra
        self.package = package


def require(module: str, extra: str):
    """Import an optional dependency or raise :class:`MissingExtraError` naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(extra, module.split(".")[0]) from exc
