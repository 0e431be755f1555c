"""One registry helper for every name the CLI, the audit and the service resolve.

Attacks (``"pgd"``), detectors (``"mahalanobis"``), audit probes (``"whitebox"``), architectures
(``"mnist-cnn"``), adversarial-training inner steps, poisoning, inference and extraction attacks, sanitisers,
output policies and aggregation methods are each kept in a :class:`Registry`: a read-only mapping from a
canonical name to the registered object, with one way in (:meth:`Registry.register`, also a decorator;
:meth:`Registry.named` for a class that learns its name) that refuses a duplicate unless asked to replace it,
one way out (:meth:`Registry.get`) whose error lists what is registered and suggests the closest name, and
:meth:`Registry.create`, which builds what is registered from keyword arguments. A family's ``register_x``
decorator and ``get_x`` builder are these two bound to its registry (``register_detector = DETECTORS.named``,
``get_detector = DETECTORS.create``), documented with the registry.

    >>> shapes = Registry("shape")
    >>> @shapes.register("square")
    ... class Square:
    ...     def __init__(self, side=1.0):
    ...         self.side = side
    >>> shapes.get("Square ") is Square
    True
    >>> shapes.create("square", side=2.0).side
    2.0
    >>> shapes.get("sqare")
    Traceback (most recent call last):
    ...
    bastion.errors.UsageError: unknown shape 'sqare' (did you mean 'square'?): choose one of square

The plug-ins themselves share :class:`Configured`: ``params()`` (the constructor arguments, for reports) and
a scikit-learn style ``repr`` built from them.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar, overload

from .errors import UsageError

__all__ = ["Configured", "Registry"]

T = TypeVar("T")
C = TypeVar("C")


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

    @overload
    def create(self: Registry[type[C]], name: str, /, **kwargs: Any) -> C: ...

    @overload
    def create(self: Registry[Callable[..., C]], name: str, /, **kwargs: Any) -> C: ...

    def create(self: Registry[Any], name: str, /, **kwargs: Any) -> Any:
        """Build what is registered under ``name`` (a class or a factory) with ``kwargs``: ``get(name)(**kwargs)``,
        e.g. ``ATTACKS.create("pgd", eps=0.3)``; an unknown name raises :class:`UsageError` with the choices."""
        return self.get(name)(**kwargs)

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


class Configured:
    """Mixin of the configurable plug-ins (attacks, detectors, sanitisers, ...): :meth:`params` and a scikit-learn
    style ``repr``, ``Name(arg=value, ...)``, built from it.

    The parameters are a dataclass's ``init`` fields (less those with ``repr=False``), else the public instance
    attributes (no leading or trailing underscore: fitted state such as ``threshold_`` is left out); a
    ``generator`` never is (it is state, not configuration).
    """

    def params(self) -> dict[str, Any]:
        """The constructor arguments, as given (for reports; a ``generator`` is left out)."""
        if dataclasses.is_dataclass(self):
            names = [f.name for f in dataclasses.fields(self) if f.init and f.repr]
        else:
            names = [k for k in vars(self) if not k.startswith("_") and not k.endswith("_")]
        return {k: getattr(self, k) for k in names if k != "generator"}

    @staticmethod
    def _param_repr(value: Any) -> str:
        """How ``repr`` shows one parameter's value (a subclass may abbreviate, e.g. a tensor by its shape)."""
        return repr(value)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={self._param_repr(v)}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"
