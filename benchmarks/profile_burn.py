"""Python CPU per run on the PostgreSQL burn-down, and where it goes (issue #14: <= 25 us/run).

    python benchmarks/profile_burn.py [--runs 20000] [--rounds 3] [--top 30]
                                      [--output report.txt] [--stats burn.prof] [--no-profile]
                                      [--freeze] [--backend postgresql|mariadb]

Runs with the project's venv; ``jobsd_async`` is imported from the checkout this script lives
in (its root goes first on ``sys.path``), and the path and commit are printed.

Each round works in a database of its own (``peers_<random>``, created and dropped by the same
helper as ``peers.py``, after a ``CHECKPOINT``): ``--runs`` pending no-op runs are created with
``create_runs`` by a ``workers=0`` instance (not measured), then ONE instance with
``workers=--workers`` (100) and default settings drains them, in this process. The window runs
from starting that instance until the runs table records every run complete (``count(*)``
polled every 20 ms on a raw asyncpg connection, as ``peers.py`` does); the instance's
shutdown is outside it. With ``--backend mariadb`` the same runs on MariaDB (``--mariadb-dsn``,
a ``peers_<random>`` database; the count polled through a second SQLAlchemy engine, as
``peers.py`` does there), and the server's CPU is that of the ``mariadbd`` process. Per round:

- **Python CPU per run**: ``time.process_time()`` over the window / runs. That is this
  process's user + system CPU, so it includes the instance's start-up (printed separately,
  about 1 us/run at 20,000 runs) and the poller (well under 1 us/run);
- the wall-clock rate (runs/s), for orientation only: this figure is not the target;
- the PostgreSQL server's CPU per run: utime + stime of every ``postgres`` process on this
  host (``/proc``) over the window. It counts whatever else the server does meanwhile, so it
  is only meaningful on an otherwise idle server;
- where the event loop waited: the share of the window it spent idle in ``epoll`` (waiting
  for the database), and how much of that fell while a claim was in flight (its claim
  statements timed by wrapping ``_claim.claim_due``). Idle time with a claim in flight is
  the claim's latency on the critical path; idle time without one is waiting on the rest.

With ``--freeze`` the heap built so far (interpreter, SQLAlchemy, the driver, the script) is
taken out of the garbage collector's sight before each round (``gc.freeze()``), as the ``jobsd
worker`` command does once its instance is up; without it the figures are those of an instance
embedded in an application that does not.

The rounds' median is the figure to compare before/after (the machine is noisy: take it on an
idle machine, and compare runs taken the same way).

Unless ``--no-profile``, one more round runs under cProfile (which inflates CPU several times:
its numbers only compare with each other), and prints the top ``--top`` entries by cumulative
and by internal time, and internal time grouped by package (asyncio, jobsd_async, sqlalchemy,
asyncpg, ...). ``--output`` also writes everything printed to a file; ``--stats`` writes the raw
profile (``python -m pstats FILE``, snakeviz).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import os
import pstats
import selectors
import statistics
import subprocess
import sys
import sysconfig
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peers import (
    BURN_POLL,
    JOBSD_FINISHED,
    jobsd_engine,
    jobsd_enqueue,
    jobsd_finished_counter,
    jobsd_instance,
    mariadb_scheme,
    scratch_database,
    scratch_mariadb,
    with_scheme,
)

ROOT = Path(__file__).resolve().parent.parent
# This checkout's jobsd_async, whatever the venv has installed (an editable install of another
# worktree, say).
sys.path.insert(0, str(ROOT))


if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


@dataclass
class Round:
    runs: int
    cpu_s: float
    startup_cpu_s: float
    wall_s: float
    server_cpu_s: float | None
    idle_s: float = 0.0
    idle_claiming_s: float = 0.0
    claims: int = 0

    @property
    def cpu_us_per_run(self) -> float:
        return self.cpu_s / self.runs * 1e6

    @property
    def server_us_per_run(self) -> float | None:
        return None if self.server_cpu_s is None else self.server_cpu_s / self.runs * 1e6


SERVER_PROCESSES = {"postgresql": ("postgres",), "mariadb": ("mariadbd", "mysqld")}


def server_cpu(names: tuple[str, ...]) -> float | None:
    """CPU seconds used so far by every process of one of these names on this host (None if
    unreadable)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    seen = False
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces: split after it.
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if name not in names:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        seen = True
    return total / ticks if seen else None


class Timeline:
    """Time the event loop spends idle in ``epoll``, and how much of it falls while a claim
    is in flight (by wrapping the selector's ``select`` and ``_claim.claim_due``)."""

    def __init__(self) -> None:
        self.idle = 0.0
        self.idle_claiming = 0.0
        self.claims = 0
        self._claiming = 0
        self._undo: list[Callable[[], None]] = []

    def __enter__(self) -> Timeline:
        from jobsd_async._store import _claim

        select = selectors.EpollSelector.select
        claim_due = _claim.claim_due

        def timed_select(selector: Any, timeout: float | None = None) -> Any:
            started = time.perf_counter()
            try:
                return select(selector, timeout)
            finally:
                waited = time.perf_counter() - started
                self.idle += waited
                if self._claiming:
                    self.idle_claiming += waited

        async def timed_claim(*args: Any, **kwargs: Any) -> Any:
            self._claiming += 1
            self.claims += 1
            try:
                return await claim_due(*args, **kwargs)
            finally:
                self._claiming -= 1

        selectors.EpollSelector.select = timed_select  # type: ignore[method-assign,assignment]
        _claim.claim_due = timed_claim
        self._undo = [
            lambda: setattr(selectors.EpollSelector, "select", select),
            lambda: setattr(_claim, "claim_due", claim_due),
        ]
        return self

    def __exit__(self, *_: object) -> None:
        for undo in self._undo:
            undo()


@contextlib.asynccontextmanager
async def scratch(
    backend: str, admin: str
) -> AsyncIterator[tuple[AsyncEngine, Callable[[], Awaitable[int]]]]:
    """An engine on a database of the round's own, and how to count the finished runs in it."""
    if backend == "postgresql":
        import asyncpg

        async with scratch_database(admin) as dsn:
            poll = await asyncpg.connect(dsn)
            engine = jobsd_engine(with_scheme(dsn, "postgresql+asyncpg"))
            try:
                yield engine, lambda: poll.fetchval(JOBSD_FINISHED)
            finally:
                await engine.dispose()
                await poll.close()
        return
    async with scratch_mariadb(admin) as url, jobsd_finished_counter(url) as (_, count):
        engine = jobsd_engine(url)
        try:
            yield engine, count
        finally:
            await engine.dispose()


async def burn(
    backend: str,
    admin: str,
    runs: int,
    workers: int,
    timeout: float,
    profiler: cProfile.Profile | None,
    *,
    freeze: bool = False,
) -> Round:
    async with scratch(backend, admin) as (engine, count):
        try:
            await jobsd_enqueue(engine, runs)
            jd, _ = jobsd_instance(engine, workers=workers)
            gc.collect()
            if freeze:  # as ``jobsd worker`` does once up: the heap so far leaves full collections
                gc.freeze()
            processes = SERVER_PROCESSES[backend]
            server_before = server_cpu(processes)
            deadline = time.perf_counter() + timeout
            if profiler is not None:
                profiler.enable()
            timeline = Timeline()
            wall_before, cpu_before = time.perf_counter(), time.process_time()
            with timeline if profiler is None else contextlib.nullcontext(timeline):
                async with jd:
                    startup = time.process_time() - cpu_before
                    while (done := await count()) < runs:
                        if time.perf_counter() > deadline:
                            raise TimeoutError(f"{done} of {runs} runs complete after {timeout}s")
                        await asyncio.sleep(BURN_POLL)
                    cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before
                    if profiler is not None:
                        profiler.disable()
                    server_after = server_cpu(processes)
            server = None if server_before is None or server_after is None else server_after - server_before
            return Round(
                runs, cpu, startup, wall, server, timeline.idle, timeline.idle_claiming, timeline.claims
            )
        finally:
            if profiler is not None:
                profiler.disable()
            gc.unfreeze()


# --------------------------------------------------------------------------------------------
# Profile presentation

STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()


def short_path(path: str) -> str:
    """A file name short enough to read, long enough to tell packages apart."""
    if path.startswith(("~", "<")):
        return path
    if "site-packages/" in path:  # (before the checkout's root: its .venv may be inside it)
        return path.split("site-packages/", 1)[1]
    resolved = Path(path)
    for base in (ROOT, STDLIB):
        if resolved.is_relative_to(base):
            return str(resolved.relative_to(base))
    return path


def shorten(stats: pstats.Stats) -> None:
    """Rewrite the file names in ``stats`` (what ``strip_dirs`` does, keeping the package)."""
    raw: dict[Any, Any] = vars(stats)["stats"]

    def key(func: tuple[str, int, str]) -> tuple[str, int, str]:
        return (short_path(func[0]), func[1], func[2])

    vars(stats)["stats"] = {
        key(func): (cc, nc, tt, ct, {key(caller): value for caller, value in callers.items()})
        for func, (cc, nc, tt, ct, callers) in raw.items()
    }


IDLE = "idle"


def group_of(path: str, name: str) -> str:
    """The package (or stdlib module) a profile entry belongs to; C functions by their owner."""
    if path == "~":
        if name == "<method 'poll' of 'select.epoll' objects>":
            return IDLE
        for owner in ("asyncpg", "sqlalchemy", "msgspec"):
            if owner in name:
                return f"{owner} (C)"
        if "_asyncio" in name or "select" in name or "epoll" in name:
            return "asyncio (C)"
        return "builtins"
    first = path.split("/", 1)[0]
    return first.removesuffix(".py")


def by_package(stats: pstats.Stats, runs: int) -> list[str]:
    raw: dict[Any, Any] = vars(stats)["stats"]
    totals: dict[str, float] = defaultdict(float)
    for (path, _line, name), (_cc, _nc, tt, _ct, _callers) in raw.items():
        totals[group_of(path, name)] += tt
    idle = totals.pop(IDLE, 0.0)
    whole = sum(totals.values())
    lines = [
        f"internal time by package (profiled; {whole / runs * 1e6:.1f} us/run in all, not counting "
        f"{idle / runs * 1e6:.1f} us/run waiting in epoll: cProfile's clock is wall time):"
    ]
    for label, tt in sorted(totals.items(), key=lambda kv: -kv[1]):
        if tt / whole >= 0.005:
            lines.append(f"  {label:24s} {tt / runs * 1e6:7.1f} us/run  {tt / whole:6.1%}")
    return lines


def profile_text(profiler: cProfile.Profile, runs: int, top: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    shorten(stats)
    for order in ("cumulative", "tottime"):
        out.write(f"\n=== top {top} by {order} (profiled round) ===\n")
        stats.sort_stats(order).print_stats(top)
    out.write("\n" + "\n".join(by_package(stats, runs)) + "\n")
    return out.getvalue()


def git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
    return done.stdout.strip()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=tuple(SERVER_PROCESSES), default="postgresql")
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test", help="admin DSN")
    parser.add_argument(
        "--mariadb-dsn",
        default="mysql://root@127.0.0.1:3306/test",
        help="admin DSN; the driver it names (mysql+asyncmy://...) is jobsd's, aiomysql if none",
    )
    parser.add_argument("--runs", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3, help="unprofiled rounds (0: profile only)")
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile round")
    parser.add_argument(
        "--freeze",
        action="store_true",
        help="gc.freeze() the heap before each round, as `jobsd worker` does once up",
    )
    parser.add_argument("--output", type=Path, help="also write the report here")
    parser.add_argument("--stats", type=Path, help="write the raw cProfile stats here")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    admin = args.dsn if args.backend == "postgresql" else args.mariadb_dsn

    import jobsd_async

    lines: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    dirty = " (jobsd_async/ modified)" if git("status", "--porcelain", "--", "jobsd_async") else ""
    say(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, load {os.getloadavg()}")
    say(f"jobsd_async from {Path(jobsd_async.__file__).parent} at {git('rev-parse', 'HEAD')}{dirty}")
    frozen = ", heap frozen as by jobsd worker" if args.freeze else ""
    server_name = {"postgresql": "PostgreSQL", "mariadb": "MariaDB"}[args.backend]
    driver = "asyncpg" if args.backend == "postgresql" else mariadb_scheme(admin).partition("+")[2]
    say(
        f"burn-down of {args.runs} no-op runs, one instance, workers={args.workers}, "
        f"{server_name} through {driver}{frozen}"
    )
    rounds: list[Round] = []
    for index in range(args.rounds):
        r = await burn(args.backend, admin, args.runs, args.workers, args.timeout, None, freeze=args.freeze)
        rounds.append(r)
        server = f"{r.server_us_per_run:.0f}" if r.server_us_per_run is not None else "?"
        say(
            f"  round {index + 1}: Python CPU {r.cpu_us_per_run:5.1f} us/run "
            f"(start-up {r.startup_cpu_s * 1000:.0f} ms of it) | {r.runs / r.wall_s:7.0f} runs/s | "
            f"{server_name} processes {server} us/run | "
            f"loop idle {r.idle_s / r.wall_s:.0%} of the window, "
            f"{r.idle_claiming_s / r.wall_s:.0%} with one of {r.claims} claims in flight"
        )
    if rounds:
        cpu = [r.cpu_us_per_run for r in rounds]
        median, low, high = statistics.median(cpu), min(cpu), max(cpu)
        say(f"Python CPU per run: median {median:.1f} us (rounds {low:.1f}-{high:.1f})")
    if not args.no_profile:
        profiler = cProfile.Profile()
        r = await burn(
            args.backend, admin, args.runs, args.workers, args.timeout, profiler, freeze=args.freeze
        )
        say(f"profiled round: Python CPU {r.cpu_us_per_run:.1f} us/run under cProfile")
        if args.stats:
            profiler.dump_stats(args.stats)
            say(f"raw profile written to {args.stats}")
        say(profile_text(profiler, args.runs, args.top))
    say(f"load average after: {os.getloadavg()}")
    if args.output:
        args.output.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
