"""Typed settings read from environment variables.

A service declares a ``msgspec.Struct`` whose fields are its settings; :func:`load_settings` reads one
variable per field (``PREFIX`` + upper-cased field name), converts it to the field's type and, when
anything is missing or malformed, raises one :class:`SettingsError` naming *every* bad variable, so an
operator fixes a deployment in one round instead of one variable per restart.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

__all__ = ["SettingsError", "env_name", "load_settings"]

S = TypeVar("S", bound=msgspec.Struct)

_SENSITIVE = ("secret", "token", "password", "key")


class SettingsError(Exception):
    """One or more environment variables are missing or malformed."""

    def __init__(self, problems: Mapping[str, str]) -> None:
        self.problems = dict(problems)
        lines = [f"  {name}: {problem}" for name, problem in sorted(self.problems.items())]
        super().__init__("invalid configuration:\n" + "\n".join(lines))


def env_name(prefix: str, field: str) -> str:
    return f"{prefix}{field}".upper()


def _is_sequence(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _is_sequence(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_is_sequence(arg) for arg in typing.get_args(tp) if arg is not type(None))
    return origin in (list, tuple, frozenset, set)


def _describe(tp: Any) -> str:
    text = getattr(tp, "__name__", None) if not typing.get_args(tp) else None
    return text or str(tp).replace("typing.", "")


def _convert(raw: str, tp: Any) -> Any:
    # Comma-separated lists are the least surprising shape for list settings in an env file.
    value: Any = [item.strip() for item in raw.split(",") if item.strip()] if _is_sequence(tp) else raw
    return msgspec.convert(value, type=tp, strict=False)


def load_settings(cls: type[S], *, prefix: str = "", environ: Mapping[str, str] | None = None) -> S:
    """Build ``cls`` from the environment; raise :class:`SettingsError` listing every problem."""
    env = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls, include_extras=True)
    values: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for field in msgspec.structs.fields(cls):
        name = env_name(prefix, field.name)
        tp = hints[field.name]
        raw = env.get(name)
        if raw is None or (raw == "" and field.required):
            if field.required:
                problems[name] = f"required, expected {_describe(tp)}"
            continue
        try:
            values[field.name] = _convert(raw, tp)
        except msgspec.ValidationError as exc:
            # Echo the bad value to help the operator, unless it may be a credential.
            shown = "" if any(word in field.name for word in _SENSITIVE) else f" (got {raw!r})"
            problems[name] = f"{exc}{shown}"
    if problems:
        raise SettingsError(problems)
    try:
        return cls(**values)
    except (TypeError, ValueError, msgspec.ValidationError) as exc:
        # __post_init__ checks spanning several fields name their variables in the message.
        raise SettingsError({cls.__name__: str(exc)}) from None
