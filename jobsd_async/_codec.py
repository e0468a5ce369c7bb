"""Arguments and results as JSON text, decoded back into the types the job function declares.

Nothing read from the database is ever unpickled: arguments are a JSON list and object,
results a JSON value.  Values are first lowered to JSON builtins by msgspec (``UUID``,
``datetime``/``date``/``time``, ``Decimal``, ``Enum``, ``bytes``, dataclasses, ``TypedDict``,
``NamedTuple``, msgspec ``Struct`` and, when installed, pydantic models), then written by the
standard ``json`` module strict (no NaN), compact and ASCII-only, so any string — lone
surrogates included — survives every database's text columns exactly.

Reading back, each argument is converted by its parameter's annotation and a result by
the return annotation (``msgspec.convert``, which also turns JSON's string keys back into
the declared key type), so a job declaring ``when: datetime`` gets a ``datetime``.
Unannotated (or ``Any``) parameters get the JSON value; so do annotations msgspec cannot
convert to (a class of the user's own, ``Callable``), which keeps every 0.1 job working.

msgspec rather than pydantic: one small compiled dependency with no others, conversions
for every type above, and a few hundred nanoseconds per value on the claim path (see
docs/performance.md); pydantic models are still accepted (through
``model_dump``/``model_validate``) when pydantic is installed.
"""

from __future__ import annotations

import inspect
import json
import sys
import typing
from collections.abc import Callable
from typing import Any

import msgspec

from ._errors import JobArgsMismatchError, JobArgsSerializationError

_ABSENT = object()


class ResultError(TypeError):
    """A job's return value cannot be stored: not serializable, or too large."""


def _enc_hook(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)  # a pydantic model
    if dump is not None and _is_pydantic_model(type(value)):
        return dump(mode="json")
    raise TypeError(f"objects of type {type(value).__qualname__} cannot be stored as JSON")


def _dec_hook(kind: type, value: Any) -> Any:
    if _is_pydantic_model(kind):
        return kind.model_validate(value)  # type: ignore[attr-defined]
    return value  # a type msgspec does not know (see Conversion): the JSON value as it is


def _is_pydantic_model(kind: object) -> bool:
    pydantic = sys.modules.get("pydantic")  # only ever loaded by the user's own imports
    return pydantic is not None and isinstance(kind, type) and issubclass(kind, pydantic.BaseModel)


def to_json(value: object) -> str:
    """JSON text of ``value``; raises TypeError/ValueError (or RecursionError) if it has none."""
    return _dumps(_lowered(value))


def _lowered(value: object) -> Any:
    """``value`` as JSON builtins (dict keys as strings, as JSON will have them)."""
    return msgspec.to_builtins(value, enc_hook=_enc_hook, str_keys=True)


class Conversion:
    """Converts JSON values into one annotation's type; None when no conversion applies."""

    __slots__ = ("hint",)

    def __init__(self, hint: object) -> None:
        self.hint = hint

    @classmethod
    def of(cls, hint: object) -> Conversion | None:
        if hint is _ABSENT or hint is Any or hint is object or hint is inspect.Parameter.empty:
            return None
        try:
            info = msgspec.inspect.type_info(hint)
        except Exception:  # a construct msgspec cannot convert to: the JSON value as it is
            return None
        if isinstance(info, msgspec.inspect.CustomType) and not _is_pydantic_model(info.cls):
            return None
        return cls(hint)

    def __call__(self, value: Any) -> Any:
        return msgspec.convert(value, self.hint, strict=False, dec_hook=_dec_hook)

    def __repr__(self) -> str:
        return getattr(self.hint, "__qualname__", None) or repr(self.hint)


def _hints(func: Callable[..., Any]) -> dict[str, Any]:
    target = func if inspect.isroutine(func) else getattr(func, "__call__", func)  # noqa: B004
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable forward references: no conversions, JSON values as before
        return {}


class ArgsCodec:
    """Arguments and results of one job function: JSON text in, declared types out."""

    __slots__ = ("_by_name", "_job", "_positional", "_var_keyword", "_var_positional", "result", "typed")

    def __init__(self, job: str, func: Callable[..., Any], signature: inspect.Signature) -> None:
        hints = _hints(func)
        self._job = job
        self._positional: list[tuple[str, Conversion | None]] = []
        self._by_name: dict[str, Conversion | None] = {}
        self._var_positional: Conversion | None = None
        self._var_keyword: Conversion | None = None
        for param in signature.parameters.values():
            conversion = Conversion.of(hints.get(param.name, _ABSENT))
            if param.kind is param.VAR_POSITIONAL:
                self._var_positional = conversion
            elif param.kind is param.VAR_KEYWORD:
                self._var_keyword = conversion
            else:
                if param.kind is not param.KEYWORD_ONLY:
                    self._positional.append((param.name, conversion))
                if param.kind is not param.POSITIONAL_ONLY:
                    self._by_name[param.name] = conversion
        self.result = Conversion.of(hints.get("return", _ABSENT))
        self.typed = (
            any(c is not None for _, c in self._positional)
            or any(c is not None for c in self._by_name.values())
            or self._var_positional is not None
            or self._var_keyword is not None
        )

    # ------------------------------------------------------------------ arguments

    def encode(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, str]:
        """JSON text of bound arguments, checked to convert back into their annotations.

        Raises JobArgsSerializationError naming an argument with no JSON form, and
        JobArgsMismatchError naming one that does not fit its annotation.
        """
        try:
            lowered_args: tuple[Any, ...] = _lowered(args)
            lowered_kwargs: dict[str, Any] = _lowered(kwargs)
            encoded = _dumps(lowered_args), _dumps(lowered_kwargs)
        except Exception as exc:  # find the argument to blame (also one nested too deep)
            for index, value in enumerate(args):
                self._check(f"argument {index}", value)
            for key, value in kwargs.items():
                self._check(f"keyword argument {key!r}", value)
            raise JobArgsSerializationError(
                f"the arguments of job {self._job!r} are not JSON-serializable ({type(exc).__name__}: {exc})"
            ) from exc
        if self.typed:
            self._convert(lowered_args, lowered_kwargs, _mismatch)
        return encoded

    def _check(self, what: str, value: object) -> None:
        try:
            to_json(value)
        except Exception as exc:
            raise JobArgsSerializationError(
                f"{what} of job {self._job!r} is not JSON-serializable: {short(value)} "
                f"({type(exc).__name__}: {exc})"
            ) from exc

    def decode(
        self, args_json: str | None, kwargs_json: str | None, misfit: Callable[[str], None]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The stored arguments in their declared types; ValueError if they are not JSON.

        An argument that does not fit its annotation (a row written before the annotation
        changed, or by 0.1, which did not check) is passed as its JSON value, as 0.1 did,
        and described to ``misfit``.
        """
        args, kwargs = parse_args(args_json, kwargs_json)
        if not self.typed:
            return args, kwargs

        def keep(job: str, what: str, conversion: Conversion, exc: Exception, value: Any) -> Any:
            misfit(f"stored {what} does not fit its annotation {conversion!r} ({exc}); passed as stored")
            return value

        return self._convert(args, kwargs, keep)

    def _convert(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        misfit: Callable[[str, str, Conversion, Exception, Any], Any],
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        def convert(what: str, conversion: Conversion | None, value: Any) -> Any:
            if conversion is None:
                return value
            try:
                return conversion(value)
            except (msgspec.ValidationError, TypeError, ValueError) as exc:
                return misfit(self._job, what, conversion, exc, value)

        positional, by_name = self._positional, self._by_name
        converted = []
        for index, value in enumerate(args):
            if index < len(positional):
                name, conversion = positional[index]
                converted.append(convert(f"argument {name!r}", conversion, value))
            else:
                converted.append(convert(f"argument {index}", self._var_positional, value))
        converted_kwargs = {
            key: convert(f"argument {key!r}", by_name.get(key, self._var_keyword), value)
            for key, value in kwargs.items()
        }
        return tuple(converted), converted_kwargs

    # ------------------------------------------------------------------ results

    def encode_result(self, value: object) -> str | None:
        """JSON text of a return value (None for None); raises ResultError if it has none."""
        if value is None:
            return None
        try:
            return to_json(value)
        except Exception as exc:
            raise ResultError(
                f"the result of job {self._job!r} is not JSON-serializable: {short(value)} "
                f"({type(exc).__name__}: {exc})"
            ) from exc

    def decode_result(self, text: str | None) -> Any:
        """A stored result in the declared return type (the JSON value if it does not fit)."""
        value = decode_result(text)
        if value is None or self.result is None:
            return value
        try:
            return self.result(value)
        except (msgspec.ValidationError, TypeError, ValueError):
            return value  # written by another version of the job: still shown, as stored


def _mismatch(job: str, what: str, conversion: Conversion, exc: Exception, value: Any) -> Any:
    raise JobArgsMismatchError(
        f"{what} of job {job!r} does not fit its annotation {conversion!r}: {exc}"
    ) from exc


def _dumps(value: object) -> str:
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def parse_args(args_json: str | None, kwargs_json: str | None) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Stored arguments as JSON values; ValueError if they are not a JSON list and object."""
    # Most runs have no arguments of one kind or the other: skip the parser for them.
    args = json.loads(args_json) if args_json and args_json != "[]" else []
    kwargs = json.loads(kwargs_json) if kwargs_json and kwargs_json != "{}" else {}
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ValueError("stored job arguments are not a JSON list and object")
    return tuple(args), kwargs


def decode_result(text: str | None) -> Any:
    """A stored result as its JSON value."""
    return None if text is None else json.loads(text)


def short(value: object) -> str:
    """``repr(value)`` cut to 200 characters, even for a value whose ``__repr__`` raises."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 200 else text[:200] + "..."
