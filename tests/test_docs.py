"""The code in the docs works: every ```python block of README.md and docs/*.md compiles,
and the blocks marked ``<!-- test -->`` (on the line before the fence) run on SQLite.

A marked block runs in a fresh interpreter, in an empty temporary directory, with the
repository on ``PYTHONPATH`` and top-level ``await`` allowed (as in ``python -m asyncio``);
it must create whatever it needs there, e.g. ``sqlite+aiosqlite:///jobs.db``.  Errors point
at the Markdown file and line.  See docs/contributing-docs.md.
"""

from __future__ import annotations

import ast
import inspect
import logging
import os
import re
import subprocess
import sys
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from jobsd_async import Backoff, Duration, JobsD

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
MARKER = "<!-- test -->"
RUN_TIMEOUT = 60.0  # seconds a marked block may take

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")

# Runs one block in the child: compiled with the Markdown file's name, its lines numbered
# as in the file, and awaited when it has top-level awaits.
_RUNNER = """
import ast, asyncio, inspect, sys
name, path = sys.argv[1], sys.argv[2]
with open(path, encoding="utf-8") as f:
    source = f.read()
code = compile(source, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
namespace = {"__name__": "__main__", "__builtins__": __builtins__}
if code.co_flags & inspect.CO_COROUTINE:
    asyncio.run(eval(code, namespace))
else:
    exec(code, namespace)
"""


@dataclass(frozen=True)
class Block:
    """A fenced code block of a Markdown file."""

    path: Path
    line: int  # the opening fence's line, 1-based
    lang: str
    code: str
    marked: bool  # the line before the fence is the marker

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.line}"

    def source(self) -> str:
        """The code, preceded by blank lines so that its line numbers are the file's."""
        return "\n" * self.line + self.code


def blocks(path: Path) -> list[Block]:
    """The top-level fenced blocks of a Markdown file (a fence inside a fence is content)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, indent = opening["fence"], opening["indent"]
        info = opening["info"].strip()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines):
            text = lines[i].strip()
            if text.startswith(fence) and set(text) == {fence[0]}:
                break
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        i += 1  # the closing fence (or the end of the file)
        marked = start > 0 and lines[start - 1].strip() == MARKER
        lang = info.split()[0].lower() if info else ""
        found.append(Block(path, start + 1, lang, "\n".join(body) + "\n", marked))
    return found


ALL_BLOCKS = [block for path in DOC_FILES for block in blocks(path)]
PYTHON = [block for block in ALL_BLOCKS if block.lang == "python"]
RUNNABLE = [block for block in PYTHON if block.marked]


def test_the_docs_have_python_blocks_and_runnable_ones() -> None:
    assert len(PYTHON) >= 20, [b.where for b in PYTHON]
    assert any(b.path.name == "README.md" for b in RUNNABLE), "the README example must be marked"
    assert len(RUNNABLE) >= 10, [b.where for b in RUNNABLE]


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_marker_comes_right_before_a_python_block(path: Path) -> None:
    fences = {b.line - 1: b for b in blocks(path)}  # the line number of the line before each
    lines = path.read_text(encoding="utf-8").splitlines()
    inside = {n for b in blocks(path) for n in range(b.line, b.line + b.code.count("\n") + 1)}
    for number, text in enumerate(lines, start=1):
        if text.strip() != MARKER or number in inside:
            continue
        block = fences.get(number)
        where = f"{path.relative_to(ROOT).as_posix()}:{number}"
        assert block is not None, f"{where}: {MARKER} is not on the line right before a fence"
        assert block.lang == "python", f"{where}: {MARKER} marks a {block.lang or 'plain'} block"


@pytest.mark.parametrize("block", PYTHON, ids=lambda b: b.where)
def test_python_block_compiles(block: Block) -> None:
    try:
        compile(
            block.source(),
            block.where,
            "exec",
            flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
            dont_inherit=True,
        )
    except SyntaxError as exc:
        line = exc.lineno if exc.lineno is not None else block.line
        where = f"{block.path.relative_to(ROOT).as_posix()}:{line}"
        pytest.fail(f"{where}: {exc.msg} (in the python block at {block.where})", pytrace=False)


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.where)
def test_marked_python_block_runs(block: Block, tmp_path: Path) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(block.source(), encoding="utf-8")
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _RUNNER, str(block.path), str(script)],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": pythonpath},
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"{block.where}: still running after {RUN_TIMEOUT:.0f} s\n"
            f"stdout:\n{exc.stdout!r}\nstderr:\n{exc.stderr!r}",
            pytrace=False,
        )
    report = f"{block.where}: exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, report
    for sign in ("was never awaited", "Task exception was never retrieved"):
        assert sign not in proc.stderr, report


def test_the_jobsd_signature_in_the_api_reference_is_the_real_one() -> None:
    """docs/api.md shows JobsD's parameters as a ``def JobsD(...)`` stub: their names, order,
    types and defaults must be the real ones."""
    block = next(b for b in PYTHON if b.path.name == "api.md" and b.code.startswith("def JobsD("))
    func = ast.parse(block.code).body[0]
    assert isinstance(func, ast.FunctionDef)
    # The names the stub's annotations use, as a reader of the page would import them.
    names: dict[str, object] = {
        "AsyncEngine": AsyncEngine,
        "Backoff": Backoff,
        "Callable": Callable,
        "Iterable": Iterable,
        "Duration": Duration,
        "datetime": datetime,
        "logging": logging,
    }
    documented = {
        arg.arg: eval(ast.unparse(arg.annotation), names) if arg.annotation else None
        for arg in (*func.args.args, *func.args.kwonlyargs)
    }
    real = typing.get_type_hints(JobsD.__init__)
    real.pop("return")
    parameters = inspect.signature(JobsD).parameters
    assert list(documented) == list(parameters), "the parameters differ"
    assert documented == real, "the types differ"
    positional: list[ast.expr | None] = [None] * (len(func.args.args) - len(func.args.defaults))
    positional += func.args.defaults
    defaults = {
        arg.arg: inspect.Parameter.empty if default is None else ast.literal_eval(default)
        for arg, default in (
            *zip(func.args.args, positional, strict=True),
            *zip(func.args.kwonlyargs, func.args.kw_defaults, strict=True),
        )
    }
    assert defaults == {name: p.default for name, p in parameters.items()}, "the defaults differ"
