"""Typed jobs: ``job.create_run(...)`` is checked by mypy against the job function's signature."""

from __future__ import annotations

import re
from pathlib import Path

from mypy import api

EXAMPLE = """\
from sqlalchemy.ext.asyncio import create_async_engine

from jobsd_async import JobsD, RunInfo

jd = JobsD(create_async_engine("sqlite+aiosqlite:///x.db"))


@jd.job
async def resize(info: RunInfo, path: str, width: int) -> None: ...


@jd.job(name="plain")
def plain(count: int, *, label: str = "") -> int:
    return count


resize.create_run("a.png", 100)  # fine: RunInfo is not the caller's to pass
resize.create_run("a.png", "wide")  # line 18: wrong type
plain.create_run(3, label="x")  # fine
plain.create_run(3, colour="red")  # line 20: unknown keyword
jd.create_run(plain, "three")  # line 21: wrong type through JobsD.create_run
jd.create_run("plain", "anything")  # fine: by name, checked at run time
"""


def test_mypy_reports_wrong_run_arguments(tmp_path: Path) -> None:
    source = tmp_path / "typed_example.py"
    source.write_text(EXAMPLE)
    out, err, _ = api.run(
        ["--strict", "--no-error-summary", "--cache-dir", str(tmp_path / "cache"), str(source)]
    )
    errors = sorted(int(m) for m in re.findall(r"typed_example\.py:(\d+): error", out))
    assert errors == [18, 20, 21], out + err
    assert 'incompatible type "str"; expected "int"' in out
    assert 'Unexpected keyword argument "colour"' in out
