"""Typed settings read from environment variables.

A service declares a ``msgspec.Struct`` whose fields are its settings; :func:`load_settings` reads one
variable per field (``PREFIX`` + upper-cased field name), converts it to the field's type and, when
anything is missing or malformed, raises one :class:`SettingsError` naming *every* bad variable, so an
operator fixes a deployment in one round instead of one variable per restart.

Any variable may instead be given as a file: ``NAME_FILE=/run/secrets/name`` reads the value from that file
(one trailing newline dropped), the convention Docker and Kubernetes secrets are mounted for, so a secret
never has to sit in the process environment or the service definition.
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


FILE_SUFFIX = "_FILE"
_MAX_VALUE_FILE_BYTES = 64 * 1024  # a setting, not a document: refuse to slurp a wrong path's contents


def _read_value_file(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        text = file.read(_MAX_VALUE_FILE_BYTES + 1)
    if len(text) > _MAX_VALUE_FILE_BYTES:
        raise OSError(f"larger than {_MAX_VALUE_FILE_BYTES} bytes")
    return text.removesuffix("\n").removesuffix("\r")


def _reason(error: msgspec.ValidationError, tp: Any) -> str:
    # msgspec names a bad choice without the good ones; an operator needs those.
    choices = _choices(tp)
    if choices is not None:
        return "expected one of " + ", ".join(str(choice) for choice in choices)
    return str(error)


def _choices(tp: Any) -> tuple[Any, ...] | None:
    """A Literal's values, through ``Annotated[...]`` and ``... | None``; None for any other type."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _choices(typing.get_args(tp)[0])
    if origin is typing.Literal:
        return typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        members = [member for member in typing.get_args(tp) if member is not type(None)]
        return _choices(members[0]) if len(members) == 1 else None
    return None


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
        path = env.get(name + FILE_SUFFIX)
        if path is not None:
            if raw is not None:
                problems[name] = f"set either {name} or {name}{FILE_SUFFIX}, not both"
                continue
            try:
                raw = _read_value_file(path)
            except OSError as exc:
                problems[name + FILE_SUFFIX] = f"cannot read {path!r}: {exc.strerror or exc}"
                continue
        if raw is None or (raw == "" and field.required):
            if field.required:
                problems[name] = f"required, expected {_describe(tp)}"
            continue
        try:
            values[field.name] = _convert(raw, tp)
        except msgspec.ValidationError as exc:
            # Echo the bad value to help the operator, unless it may be a credential.
            secret = path is not None or any(word in field.name for word in _SENSITIVE)
            shown = "" if secret else f" (got {raw!r})"
            problems[name] = f"{_reason(exc, tp)}{shown}"
    if problems:
        raise SettingsError(problems)
    try:
        return cls(**values)
    except (TypeError, ValueError, msgspec.ValidationError) as exc:
        # __post_init__ checks spanning several fields name their variables in the message.
        raise SettingsError({cls.__name__: str(exc)}) from None
