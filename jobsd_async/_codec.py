"""Arguments and results as JSON text: what every instance reads back from the database.

Nothing read from the database is ever unpickled: arguments are a JSON list and object,
results a JSON value.  Encoding is strict (no NaN), compact and ASCII-only, so any string
survives every database's text columns.
"""

from __future__ import annotations

import json
from typing import Any

from ._errors import JobArgsSerializationError


def encode_args(job: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, str]:
    """JSON text of the positional and keyword arguments, naming any argument that fails."""
    try:
        return _dumps(list(args)), _dumps(kwargs)
    except Exception:
        pass  # find the argument to blame (also one nested too deep: RecursionError)
    for index, value in enumerate(args):
        _check_json(job, f"argument {index}", value)
    for key, value in kwargs.items():
        _check_json(job, f"keyword argument {key!r}", value)
    raise AssertionError("unreachable: some argument failed to serialize")


def _check_json(job: str, what: str, value: object) -> None:
    try:
        _dumps(value)
    except Exception as exc:
        raise JobArgsSerializationError(
            f"{what} of job {job!r} is not JSON-serializable: {_short(value)} ({type(exc).__name__}: {exc})"
        ) from exc


def _dumps(value: object) -> str:
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def decode_args(args_json: str | None, kwargs_json: str | None) -> tuple[tuple[Any, ...], dict[str, Any]]:
    # Most runs have no arguments of one kind or the other: skip the parser for them.
    args = json.loads(args_json) if args_json and args_json != "[]" else []
    kwargs = json.loads(kwargs_json) if kwargs_json and kwargs_json != "{}" else {}
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ValueError("stored job arguments are not a JSON list and object")
    return tuple(args), kwargs


def encode_result(value: object) -> str | None:
    """JSON text of a job's return value; raises TypeError/ValueError if it has none."""
    return None if value is None else _dumps(value)


def decode_result(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _short(value: object) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 200 else text[:200] + "..."
