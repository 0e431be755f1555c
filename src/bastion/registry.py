"""One registry helper for every name the CLI, the audit and the service resolve.

Attacks (``"pgd"``), detectors (``"mahalanobis"``), audit probes (``"whitebox"``), architectures
(``"mnist-cnn"``), adversarial-training inner steps and, next, poisoning, inference, extraction and
aggregation methods are each kept in a :class:`Registry`: a read-only mapping from a canonical name to
the registered object, with one way in (:meth:`Registry.register`, also a decorator) that refuses a
duplicate unless asked to replace it, and one way out (:meth:`Registry.get`) whose error lists what is
registered and suggests the closest name.

    >>> shapes = Registry("shape")
    >>> @shapes.register("square")
    ... class Square: ...
    >>> shapes.get("Square ") is Square
    True
    >>> shapes.get("sqare")
    Traceback (most recent call last):
    ...
    bastion.errors.UsageError: unknown shape 'sqare' (did you mean 'square'?): choose one of square
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar, overload

from .errors import UsageError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """A named collection of registered objects (classes, factories, records), read like a dict.

    Args:
        kind: what is registered, singular ("attack", "detector", ...): used in error messages.

    Names are canonical: stripped and lower-cased when registered and when looked up.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    @staticmethod
    def canonical(name: str) -> str:
        """The form names are stored and looked up in: stripped, lower case."""
        if not isinstance(name, str):
            raise UsageError(f"a registered name must be a string, got {type(name).__name__}")
        return name.strip().lower()

    @overload
    def register(self, name: str, obj: T, *, replace: bool = False) -> T: ...

    @overload
    def register(self, name: str, *, replace: bool = False) -> Callable[[T], T]: ...

    def register(self, name: str, obj: T | None = None, *, replace: bool = False) -> T | Callable[[T], T]:
        """Register ``obj`` under ``name`` and return it; without ``obj``, a decorator that does so.

        A name that is already taken is refused (``UsageError``) unless ``replace=True``: two plug-ins
        choosing the same name must not silently shadow each other.
        """
        key = self.canonical(name)
        if not key:
            raise UsageError(f"a {self.kind} name must not be empty")

        def add(value: T) -> T:
            if key in self._items and not replace and self._items[key] is not value:
                raise UsageError(
                    f"a {self.kind} named {key!r} is already registered ({self._items[key]!r}): "
                    "choose another name, or pass replace=True to replace it"
                )
            self._items[key] = value
            return value

        return add if obj is None else add(obj)

    def named(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
        """A class decorator that registers the class under ``name`` and sets its ``name`` class attribute to the
        canonical name (how attacks, detectors and the other plug-in families learn the name they answer to)."""
        key = self.canonical(name)
        add = self.register(name, replace=replace)

        def deco(cls: T) -> T:
            add(cls)
            setattr(cls, "name", key)  # noqa: B010 - T is any class; its ``name`` ClassVar is set here
            return cls

        return deco

    def unregister(self, name: str) -> T:
        """Remove and return the object registered under ``name`` (for tests and plug-in reloads)."""
        key = self.canonical(name)
        if key not in self._items:
            raise self.unknown(name)
        return self._items.pop(key)

    def get(self, name: str) -> T:  # type: ignore[override] # a missing name is an error, not None
        """The object registered under ``name``; an unknown name raises :class:`UsageError` with the choices."""
        key = self.canonical(name)
        if key not in self._items:
            raise self.unknown(name)
        return self._items[key]

    def unknown(self, name: str) -> UsageError:
        """The error for an unknown ``name``: the closest registered name, then every choice."""
        key = self.canonical(name) if isinstance(name, str) else str(name)
        close = difflib.get_close_matches(key, list(self._items), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return UsageError(f"unknown {self.kind} {name!r}{hint}: choose one of {', '.join(self.names())}")

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._items)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.canonical(name) in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"
