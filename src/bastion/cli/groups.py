"""Option groups: options that several commands declare alike, declared once.

A group is a frozen dataclass, subclass of :class:`OptionGroup`, whose fields are ``Annotated`` typer options with
their defaults. A command takes the whole group as one parameter and is wrapped by :func:`expand_groups`:
typer reads a command's options from its signature, so the wrapper's signature shows the group's options in that
parameter's place (same flags, help, defaults and order), and the command receives the group built from them.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

__all__ = ["OptionGroup", "expand_groups"]

T = TypeVar("T")


class OptionGroup:
    """Base of the option groups (each a frozen dataclass) that :func:`expand_groups` expands into their options."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    def named(self, **renamed: str) -> dict[str, Any]:
        """The options by their names, in order; ``renamed``: an option's name -> the name to give it instead (the
        keyword the library takes it as)."""
        return {renamed.get(f.name, f.name): getattr(self, f.name) for f in dataclasses.fields(self)}


def _is_group(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, OptionGroup) and dataclasses.is_dataclass(annotation)


def _group_params(group: type) -> list[inspect.Parameter]:
    """The group's fields as keyword parameters, annotated with their typer options (a field without a default:
    a required option)."""
    hints = typing.get_type_hints(group, include_extras=True)
    empty, missing = inspect.Parameter.empty, dataclasses.MISSING
    return [
        inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=empty if f.default is missing else f.default,
            annotation=hints[f.name],
        )
        for f in dataclasses.fields(group)
    ]


def expand_groups(command: Callable[..., T]) -> Callable[..., T]:
    """``command`` with every parameter annotated with an option group replaced, in the signature typer reads, by
    the group's options; called (by typer: keywords only) with those options, it calls ``command`` with the group."""
    signature = inspect.signature(command, eval_str=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, tuple[type, list[str]]] = {}
    for param in signature.parameters.values():
        if not _is_group(param.annotation):
            params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))
            continue
        fields = _group_params(param.annotation)
        groups[param.name] = (param.annotation, [f.name for f in fields])
        params.extend(fields)
    names = [p.name for p in params]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise TypeError(f"{command.__name__}: option group fields clash with its parameters: {', '.join(clash)}")

    @functools.wraps(command)
    def run(**kwargs: Any) -> T:
        for name, (group, fields) in groups.items():
            kwargs[name] = group(**{f: kwargs.pop(f) for f in fields})
        return command(**kwargs)

    expanded = signature.replace(parameters=params)
    run.__signature__ = expanded  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params} | {"return": signature.return_annotation}
    return run
