"""The tables of a prefix as the database shows them, comparable across prefixes."""

from __future__ import annotations

import json
import re
from typing import Any

from sqlalchemy import Connection, text


def describe(
    conn: Connection, prefix: str, suffixes: tuple[str, ...] = ("runs", "instances", "migrations")
) -> dict[str, Any]:
    """The tables of ``prefix`` as the database shows them (columns, types, indexes), with
    the prefix replaced, so two prefixes' schemas compare equal when they are."""
    tables = {}
    for suffix in suffixes:
        table = prefix + suffix
        if conn.dialect.name == "postgresql":
            columns = conn.execute(
                text(
                    "SELECT column_name, data_type, character_maximum_length, is_nullable, "
                    "column_default, collation_name FROM information_schema.columns "
                    "WHERE table_name = :t ORDER BY ordinal_position"
                ),
                {"t": table},
            ).all()
            indexes = conn.execute(
                text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = :t ORDER BY indexname"),
                {"t": table},
            ).all()
            described: Any = [list(map(tuple, columns)), list(map(tuple, indexes))]
        elif conn.dialect.name == "sqlite":
            columns = conn.exec_driver_sql(f"PRAGMA table_info('{table}')").all()
            indexes = conn.execute(
                text(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = :t ORDER BY name"
                ),
                {"t": table},
            ).all()
            described = [list(map(tuple, columns)), [(n, " ".join(str(s).split())) for n, s in indexes]]
        else:
            create = re.sub(
                r" AUTO_INCREMENT=\d+", "", str(conn.exec_driver_sql(f"SHOW CREATE TABLE `{table}`").one()[1])
            )
            lines = [line.rstrip(",") for line in create.splitlines()]
            # Keys are listed in creation order, which a rebuild (ALTER ... MODIFY) changes.
            described = [line for line in lines if "KEY `" not in line] + sorted(
                key for key in lines if "KEY `" in key
            )
        tables[suffix] = json.loads(json.dumps(described, default=str).replace(prefix, "P_"))
    return tables
