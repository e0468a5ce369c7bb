"""Text that every database can store: no NUL characters, no lone surrogates, bounded length.

PostgreSQL rejects NUL in text, and no driver can encode a lone surrogate as UTF-8.  A
name with either is refused at input; texts jobsd writes itself (error messages, tracebacks)
have them replaced with U+FFFD and are cut to a documented length.
"""

from __future__ import annotations

import re

MAX_ERROR_LENGTH = 16_384  # characters of run_completed_error
MAX_RESULT_LENGTH = 4 * 1024 * 1024  # characters of a result's JSON (run_result)
MAX_TRACEBACK_LENGTH = 32_768  # characters of run_completed_traceback
REPLACEMENT = "\ufffd"

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def is_storable(text: str) -> bool:
    """True if ``text`` has no NUL character and no lone surrogate."""
    return _UNSTORABLE.search(text) is None


def storable(text: str, limit: int) -> str:
    """``text`` with NUL and lone surrogates replaced by U+FFFD, cut to ``limit`` characters."""
    text = _UNSTORABLE.sub(REPLACEMENT, text)
    if len(text) <= limit:
        return text
    marker = f"... [{len(text) - limit} more characters cut]"
    return text[: max(0, limit - len(marker))] + marker
