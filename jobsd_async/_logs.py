"""Log records as JSON lines, for log aggregators (``jobsd worker --log-format json``)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

__all__ = ("JsonFormatter",)

# Attributes every LogRecord has; anything else on a record came in through ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the ``extra`` fields
    (jobsd logs ``run_id``, ``row_id``, ``job``, ``attempt`` and ``instance_id``) and, for
    an exception, its type, message and traceback.

    ``logging.getLogger().handlers[0].setFormatter(jobsd_async.JsonFormatter())``
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            entry["error.type"] = type(error).__qualname__
            entry["error.message"] = str(error)
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)
