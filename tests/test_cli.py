"""The ``jobsd`` command line (SPEC §6.2), against real databases.

The worker, and every command that imports the app (``--app``), runs as a real subprocess
(``python -m jobsd_async``); the other commands run in this process, on a thread with an
event loop of their own, through Click's test runner: the same command, argument parsing,
environment variables, output and exit status, without a new interpreter's start-up (about
two seconds on a small machine) for each of the dozens of commands.  ``test_python_m_and_help``
runs those in a process too.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import FAST, eventually, fetch_runs
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from jobsd_async import JobsD, RunStatus, cli, schema
from jobsd_async._store._schema import build_tables

HERE = Path(__file__).parent
APP = "--app"


class Jobsd:
    """Runs ``jobsd`` against the test's database and table prefix."""

    def __init__(self, database_url: str, table_prefix: str, **env: str) -> None:
        self.settings = {
            "JOBSD_DATABASE_URL": database_url,
            "JOBSD_TABLE_PREFIX": table_prefix,
            "COLUMNS": "200",  # --help on one line per option
            **env,
        }
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
            **self.settings,
        }

    async def start(self, *args: str, **env: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "jobsd_async",
            *args,
            cwd=HERE,
            env={**self.env, **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    async def __call__(self, *args: str, **env: str) -> tuple[int, str, str]:
        """``jobsd ARGS``: exit status, stdout, stderr."""
        if "worker" in args or "JOBSD_APP" in env or any(a.partition("=")[0] == APP for a in args):
            return await self.in_a_process(*args, **env)
        # (No timeout of its own: a thread cannot be cancelled, pytest-timeout ends the test.)
        return await asyncio.to_thread(self._in_this_process, args, env)

    async def in_a_process(self, *args: str, **env: str) -> tuple[int, str, str]:
        proc = await self.start(*args, **env)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    def _in_this_process(self, args: tuple[str, ...], env: dict[str, str]) -> tuple[int, str, str]:
        hook = threading.excepthook  # (the command quiets threads' errors, process-wide)
        try:
            result = CliRunner().invoke(
                cli.main, args, env={**self.settings, **env}, prog_name="jobsd", catch_exceptions=False
            )
        finally:
            threading.excepthook = hook
        return result.exit_code, result.stdout, result.stderr

    async def json(self, *args: str) -> Any:
        code, out, err = await self(*args, "--json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def jobsd(database_url: str, table_prefix: str) -> Jobsd:
    return Jobsd(database_url, table_prefix)


@pytest.fixture
async def peer(engine: AsyncEngine, table_prefix: str) -> AsyncIterator[JobsD]:
    """An in-test instance on the same tables with the app's jobs (producer only)."""
    jd = JobsD(engine, table_prefix=table_prefix, workers=0, **{**FAST, "poll_interval": 0.1})
    jd.register_job("long", lambda seconds: "peer")
    jd.register_job("echo", lambda value: value)
    jd.register_job("fail", lambda: None, retries_error_limit=0)
    jd.register_job("frozen", lambda: 0)
    await jd.up()
    try:
        yield jd
    finally:
        await jd.down()
        async with engine.begin() as conn:
            await conn.run_sync(jd.metadata.drop_all)


async def running(jd: JobsD, run_id: int) -> None:
    async def started() -> bool:
        return (await jd.get_run_state(run_id)).status is RunStatus.RUNNING

    await eventually(started, timeout=30, what="the worker starting the run")


async def started_worker(jobsd: Jobsd, *args: str, **env: str) -> asyncio.subprocess.Process:
    proc = await jobsd.start("worker", "--app", "cli_app:jd", *args, **env)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert b"jobsd worker: instance" in line, line
    return proc


async def instance_row(engine: AsyncEngine, prefix: str, instance_id: int) -> Any:
    instances = build_tables(prefix).instances
    async with engine.connect() as conn:
        return (await conn.execute(select(instances).where(instances.c.id == instance_id))).mappings().one()


# ------------------------------------------------------------------------------ jobsd worker


async def test_sigterm_hands_a_long_job_over_without_using_a_retry_and_exits_0(
    jobsd: Jobsd, peer: JobsD, engine: AsyncEngine, table_prefix: str
) -> None:
    worker = await started_worker(jobsd, "--grace-period", "0")
    run_id = await peer.create_run("long", 60).run()
    await running(peer, run_id)
    owner = (await peer.get_run_state(run_id)).run_started_by
    worker.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(worker.wait(), 30) == 0
    rows = await fetch_runs(peer)
    assert rows[0]["run_completed_error"] == "job run killed"
    assert len(rows) == 2 and rows[1]["run_completed_at"] is None, "not handed over"
    assert rows[1]["retries_on_error_count"] == rows[1]["retries_on_timeout_count"] == 0
    assert owner is not None
    assert (await instance_row(engine, table_prefix, owner))["shutdown_at"] is not None


async def test_the_worker_freezes_its_start_up_heap(jobsd: Jobsd, peer: JobsD) -> None:
    # Once up (its banner printed), the worker's start-up objects are out of the garbage
    # collector's full collections.
    worker = await started_worker(jobsd)
    try:
        run_id = await peer.create_run("frozen").run()
        state = await peer.wait_for_run(run_id, timeout=30)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(worker.wait(), 30) == 0
    assert state.status is RunStatus.SUCCEEDED
    assert state.result > 10_000  # the interpreter, SQLAlchemy, the driver, the app


async def test_a_second_signal_skips_the_wait(jobsd: Jobsd, peer: JobsD) -> None:
    worker = await started_worker(jobsd, "--grace-period", "0", CLI_APP_SHUTDOWN_TIMEOUT="300")
    run_id = await peer.create_run("long", 600).run()
    await running(peer, run_id)
    worker.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)  # the drain has begun: it would wait 300 s for the job
    worker.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(worker.wait(), 30) == 0
    rows = await fetch_runs(peer)
    assert rows[0]["run_completed_error"] == "job run killed"
    assert rows[1]["origin_id"] == run_id and rows[1]["run_completed_at"] is None


async def test_grace_period_fits_the_whole_shutdown(jobsd: Jobsd, peer: JobsD) -> None:
    # (``peer`` is here for its teardown: it drops the tables the worker made.)
    worker = await started_worker(jobsd, "--grace-period", "10", CLI_APP_SHUTDOWN_TIMEOUT="300")
    assert worker.stdout is not None
    banner = b"".join([await worker.stdout.readline() for _ in range(3)]).decode()
    worker.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(worker.wait(), 30) == 0
    assert "jobs get 6.5s, then cancel_grace 0.5s (fits a 10s grace period)" in banner


async def test_burst_runs_what_is_due_then_exits_0(jobsd: Jobsd, peer: JobsD) -> None:
    run_ids = [await peer.create_run("echo", f"v{i}").run() for i in range(5)]
    later = await peer.create_run("echo", "later").run_after(3600)
    code, _, err = await jobsd("worker", "--app", "cli_app:jd", "--burst")
    assert code == 0, err
    states = [await peer.get_run_state(run_id) for run_id in run_ids]
    assert [s.result for s in states] == [f"v{i}" for i in range(5)]
    assert (await peer.get_run_state(later)).status is RunStatus.PENDING


async def test_worker_options_come_from_the_environment_too(jobsd: Jobsd, peer: JobsD) -> None:
    run_id = await peer.create_run("echo", "from env").run()
    code, out, err = await jobsd(
        "worker", JOBSD_APP="cli_app:jd", JOBSD_BURST="1", JOBSD_WORKERS="3", JOBSD_MAX_CONNECTIONS="2"
    )
    assert code == 0, err
    assert "3 workers, at most 2 connections" in out
    assert (await peer.get_run_state(run_id)).result == "from env"


async def test_worker_log_format_json(jobsd: Jobsd, peer: JobsD) -> None:
    await peer.create_run("fail").run()
    code, _, err = await jobsd("worker", "--app", "cli_app:jd", "--burst", "--log-format", "json")
    assert code == 0, err
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    failure = next(r for r in records if r["message"].startswith("jobsd: run") and "failed" in r["message"])
    assert failure["level"] == "ERROR" and failure["job"] == "fail" and failure["attempt"] == 1
    assert failure["error.type"] == "ValueError" and "Traceback" in failure["traceback"]


# ------------------------------------------------------------------------------ jobsd runs, instances, prune


async def test_runs_commands_with_json(jobsd: Jobsd, peer: JobsD) -> None:
    failed = await peer.create_run("fail").run()
    code, _, err = await jobsd("worker", "--app", "cli_app:jd", "--burst")
    assert code == 0, err
    pending = await peer.create_run("echo", "later").unique("tomorrow").run_after(3600)

    listed = await jobsd.json("runs", "list")
    assert [(r["run_id"], r["status"]) for r in listed] == [(pending, "pending"), (failed, "failed")]
    assert listed[1]["run_completed_error"] == "ValueError: fails on purpose"
    assert [r["run_id"] for r in await jobsd.json("runs", "list", "--status", "failed")] == [failed]
    assert [r["run_id"] for r in await jobsd.json("runs", "list", "--job", "echo")] == [pending]
    assert [r["run_id"] for r in await jobsd.json("runs", "list", "--name", "tomorrow")] == [pending]
    assert await jobsd.json("runs", "list", "--since", "2099-01-01T00:00:00") == []
    assert len(await jobsd.json("runs", "list", "--since", "1h", "--limit", "1")) == 1

    shown = await jobsd.json("runs", "show", str(failed))
    assert shown["run"]["status"] == "failed" and len(shown["attempts"]) == 1
    assert shown["attempts"][0]["run_completed_error"] == "ValueError: fails on purpose"

    code, out, _ = await jobsd("runs", "cancel", str(pending))
    assert (code, out.strip()) == (0, f"run {pending} cancelled")
    assert (await peer.get_run_state(pending)).status is RunStatus.CANCELLED
    code, out, _ = await jobsd("runs", "cancel", str(pending))
    assert (code, out.strip()) == (0, f"run {pending} had already finished")

    code, out, err = await jobsd("runs", "retry", str(failed))
    assert code == 0, err
    retried = int(out.split()[-1])
    assert retried not in (failed, pending)
    state = await peer.get_run_state(retried)
    assert (state.job, state.status) == ("fail", RunStatus.PENDING)
    code, out, _ = await jobsd("runs", "retry", str(failed))  # while the retry is pending: the same one
    assert int(out.split()[-1]) == retried
    code, _, err = await jobsd("runs", "retry", str(retried))
    assert code == 1 and "only a run that ended failed" in err

    human = (await jobsd("runs", "list"))[1].splitlines()
    assert human[0].split()[:5] == ["RUN", "JOB", "QUEUE", "PRIO", "STATUS"] and len(human) == 4


async def test_queues_commands(jobsd: Jobsd, peer: JobsD) -> None:
    mail = await peer.create_run("echo", "m").queue("mail").priority(3).run_after(3600)
    await peer.create_run("echo", "d").run_after(3600)
    code, out, err = await jobsd("queues", "pause", "mail")
    assert (code, out.strip()) == (0, "queue mail paused"), err
    code, out, _ = await jobsd("queues", "pause", "mail")
    assert (code, out.strip()) == (0, "queue mail was already paused")
    listed = {q["name"]: q for q in await jobsd.json("queues", "list")}
    assert (listed["mail"]["paused"], listed["mail"]["pending"]) == (True, 1)
    assert (listed["default"]["paused"], listed["default"]["pending"]) == (False, 1)
    assert [q.name for q in await peer.list_queues() if q.paused] == ["mail"]
    assert [r["run_id"] for r in await jobsd.json("runs", "list", "--queue", "mail")] == [mail]
    shown = await jobsd.json("runs", "show", str(mail))
    assert (shown["run"]["queue"], shown["run"]["priority"]) == ("mail", 3)
    code, out, _ = await jobsd("queues", "resume", "mail")
    assert (code, out.strip()) == (0, "queue mail resumed")
    code, out, _ = await jobsd("queues", "resume", "mail")
    assert (code, out.strip()) == (0, "queue mail was not paused")
    code, _, err = await jobsd("queues", "pause", "a,b")
    assert code == 1 and "comma" in err


async def test_instances_and_prune(jobsd: Jobsd, peer: JobsD) -> None:
    live = await jobsd.json("instances")
    assert [i["id"] for i in live] == [peer.instance_id]
    assert live[0]["alive"] is True and live[0]["host"] and live[0]["pid"] == os.getpid()
    assert live[0]["queues"] is None  # all queues
    code, out, err = await jobsd("prune", "--older-than", "7d")
    assert (code, out.strip()) == (0, "deleted 0 rows"), err
    code, _, err = await jobsd("prune", "--older-than", "soon")
    assert code == 2 and "not a duration" in err


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["runs", "show", "abc"], 2, "is not a valid integer"),
        (["runs", "show", "1.5"], 2, "is not a valid integer"),
        (["runs", "cancel", "--", "-3"], 1, "no run with id -3"),
        (["runs", "show", "0"], 1, "no run with id 0"),
        (["runs", "show", "987654321"], 1, "no run with id 987654321"),
        (["runs", "show", str(2**70)], 1, f"no run with id {2**70}"),
        (["runs", "retry", "987654321"], 1, "no run with id"),
        (["runs", "list", "--status", "lost"], 2, "Invalid value for '--status'"),
        (["worker", "--app", "no_such_module:jd"], 2, "cannot import 'no_such_module'"),
        (["worker", "--app", "cli_app"], 2, "expected MODULE:ATTR"),
        (["worker", "--app", "cli_app:nothing"], 2, "has no 'nothing'"),
        (["worker", "--app", "cli_app:long"], 2, "not a JobsD"),
    ],
)
async def test_errors_are_one_line_with_the_documented_exit_status(
    jobsd: Jobsd, peer: JobsD, args: list[str], status: int, message: str
) -> None:
    code, _, err = await jobsd(*args)
    assert code == status, err
    assert message in err
    assert "Traceback" not in err


async def test_verbose_shows_the_traceback(jobsd: Jobsd, peer: JobsD) -> None:
    code, _, err = await jobsd("--verbose", "runs", "show", "987654321")
    assert code == 1 and "Traceback" in err and "RunNotFoundError" in err


# ------------------------------------------------------------------------------ healthcheck, schema


async def test_healthcheck(jobsd: Jobsd, peer: JobsD) -> None:
    code, out, err = await jobsd("healthcheck")
    assert code == 0, err
    assert out.startswith("healthy: database reachable, schema_version")
    code, _, err = await jobsd("healthcheck", "--app", "cli_app:jd")
    assert code == 1 and "no live instance of cli_app:jd" in err
    worker = await started_worker(jobsd)
    try:
        report = await jobsd.json("healthcheck", "--app", "cli_app:jd")
        assert report["healthy"] is True and report["instance"] > peer.instance_id
        code, _, err = await jobsd("healthcheck", "--instance-id", str(report["instance"]))
        assert code == 0, err
    finally:
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(worker.wait(), 30) == 0
    code, _, err = await jobsd("healthcheck", "--instance-id", str(report["instance"]))
    assert code == 1 and "is not alive" in err


async def test_healthcheck_with_the_database_down(jobsd: Jobsd, backend: str) -> None:
    down = {
        "sqlite": "sqlite+aiosqlite:////nonexistent-dir/jobsd.db",
        "postgresql": "postgresql+asyncpg://postgres@127.0.0.1:1/test",
        "mariadb": "mysql+aiomysql://root@127.0.0.1:1/test",
    }[backend]
    # In a process: the driver's own thread may fail after the command ended, which only
    # the command's process-wide quieting keeps from printing a traceback.
    code, _, err = await jobsd.in_a_process("healthcheck", JOBSD_DATABASE_URL=down)
    assert code == 1 and "database unreachable" in err and "Traceback" not in err
    code, _, err = await jobsd.in_a_process("runs", "list", JOBSD_DATABASE_URL=down)
    assert code == 1 and len(err.strip().splitlines()) == 1


async def test_schema_commands(jobsd: Jobsd, engine: AsyncEngine, table_prefix: str) -> None:
    no_url = {"JOBSD_DATABASE_URL": ""}
    try:
        assert (await jobsd("schema", "current"))[1].strip() == "0"
        code, _, err = await jobsd("schema", "check")
        assert code == 1 and "schema version 0" in err
        code, _, err = await jobsd("healthcheck")
        assert code == 1 and "schema version 0" in err
        code, out, err = await jobsd("schema", "sql")
        assert code == 0, err
        assert f"CREATE TABLE {table_prefix}runs" in out
        code, out, _ = await jobsd("schema", "upgrade")
        assert (code, out.strip()) == (
            0,
            f"upgraded to version {schema.CURRENT_VERSION} (applied {schema.CURRENT_VERSION})",
        )
        assert (await jobsd("schema", "current"))[1].startswith(f"{schema.CURRENT_VERSION} (jobsd_async")
        assert (await jobsd("schema", "check"))[0] == 0
        code, out, _ = await jobsd("schema", "sql")
        assert (code, out.startswith("-- the tables are at the current version")) == (0, True)
        code, out, _ = await jobsd(
            "schema", "sql", "--dialect", "mariadb", "--from", "1", JOBSD_DATABASE_URL=""
        )
        assert code == 0 and "utf8mb4_nopad_bin" in out
        code, _, err = await jobsd("schema", "sql", **no_url)
        assert code == 2 and "--dialect" in err
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(build_tables(table_prefix).metadata.drop_all)


async def test_python_m_and_help(jobsd: Jobsd) -> None:
    code, out, _ = await jobsd.in_a_process("--help")
    assert code == 0
    for command in ("worker", "runs", "instances", "prune", "healthcheck", "schema"):
        assert command in out
    code, out, _ = await jobsd("worker", "--help")
    assert code == 0 and "env var: JOBSD_APP" in out and "JOBSD_GRACE_PERIOD" in out
    # A command on the database, configured by the environment, in a process of its own.
    code, out, err = await jobsd.in_a_process("schema", "current")
    assert (code, out.strip()) == (0, "0"), err
    code, _, err = await jobsd.in_a_process("runs", "show", "abc")
    assert code == 2 and "is not a valid integer" in err
