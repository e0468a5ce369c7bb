"""The examples work: the quickstart script, the FastAPI app and the aiohttp app (on SQLite).

The web apps register their jobs on a module-level ``jd``; each app (test client) starts
that same object again, on the app's database and event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestClient as AiohttpClient
from aiohttp.test_utils import TestServer
from fastapi import FastAPI

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import aiohttp_app  # noqa: E402
import fastapi_app  # noqa: E402

with warnings.catch_warnings():
    # Recent Starlette asks for httpx2 and warns (an error under our filterwarnings) when
    # its TestClient finds only httpx; the client works the same.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`", UserWarning)
    from starlette.testclient import TestClient

WAIT = 20.0  # seconds: the most a run of the example apps may take to finish


def sqlite_url(tmp_path: Path, name: str = "example.db") -> str:
    return f"sqlite+aiosqlite:///{tmp_path / name}"


def stored_runs(database: Path) -> list[tuple[int, str, str | None]]:
    """(id, job, job_args) of every row in a SQLite file's runs table, read without jobsd."""
    with sqlite3.connect(database) as db:
        return db.execute("SELECT id, job, job_args FROM jobsd_runs ORDER BY id").fetchall()


def test_quickstart_runs_and_exits_by_itself() -> None:
    started = time.monotonic()
    # The package may be importable only from the checkout (not installed): pass it along.
    pythonpath = os.pathsep.join(filter(None, [str(EXAMPLES.parent), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        env={**os.environ, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - started
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{proc.stderr}"
    assert elapsed < 60
    for line in (
        "is up",
        "announce: now: the time is",
        "checksum: running in thread 'jobsd-",
        "flaky: attempt 1 fails on purpose",
        "flaky: attempt 2 succeeds (retry 1)",
        "success 3 of 3",
        "(same: True)",
        "announce: 3 s later",
        "all runs finished:",
        "instance is down",
    ):
        assert line in out, f"{line!r} missing from the quickstart's output:\n{out}"
    assert "success 4 of 3" not in out
    summary = out[out.index("all runs finished:") :]
    assert summary.count(": succeeded ") == 7, summary
    assert "Traceback" not in proc.stderr
    # The one traceback logged is the failure the demo makes on purpose (failures are
    # logged with their traceback).
    assert out.count("Traceback") == 1, out
    assert "RuntimeError: the first attempt always fails" in out[out.index("Traceback") :]


# ---------------------------------------------------------------------------- FastAPI


@asynccontextmanager
async def fastapi_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client calling ``app`` in-process, with the app's lifespan running around it.

    It runs on the test's event loop (``starlette.testclient.TestClient`` runs one of its own
    in a thread; see the test that uses two of them).
    """
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def wait_for_state(client: httpx.AsyncClient, run_id: int) -> dict[str, Any]:
    """Poll ``GET /runs/{run_id}`` until the run has finished; fail after WAIT seconds."""
    try:
        async with asyncio.timeout(WAIT):
            while True:
                response = await client.get(f"/runs/{run_id}")
                assert response.status_code == 200, response.text
                state: dict[str, Any] = response.json()
                if state["finished"]:
                    return state
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"run {run_id} did not finish within {WAIT}s")


async def test_fastapi_app_creates_and_reports_runs(tmp_path: Path) -> None:
    app = fastapi_app.create_app(sqlite_url(tmp_path))
    async with fastapi_client(app) as client:
        assert fastapi_app.jd.engine.url.database == str(tmp_path / "example.db")
        response = await client.post("/jobs/add", json={"args": [2, 3]})
        assert response.status_code == 201, response.text
        run_id = response.json()["run_id"]
        assert isinstance(run_id, int)

        state = await wait_for_state(client, run_id)
        assert state["status"] == "succeeded"
        assert state["result"] == 5
        assert state["run_id"] == run_id
        assert state["job"] == "add"
        assert state["attempts"] == 1

        # A body is optional when the job's parameters have defaults.
        response = await client.post("/jobs/announce")
        assert response.status_code == 201, response.text
        state = await wait_for_state(client, response.json()["run_id"])
        assert state["status"] == "succeeded"
        assert state["result"].startswith("hello: the time is")


async def test_fastapi_app_rejects_bad_requests(tmp_path: Path) -> None:
    app = fastapi_app.create_app(sqlite_url(tmp_path))
    async with fastapi_client(app) as client:
        assert (await client.post("/jobs/no-such-job")).status_code == 404
        assert (await client.post("/jobs/add", json={"args": [1]})).status_code == 422
        assert (await client.get("/runs/999")).status_code == 404


async def test_fastapi_app_reads_the_database_url_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBSD_DATABASE_URL", sqlite_url(tmp_path))
    async with fastapi_client(fastapi_app.create_app()) as client:
        response = await client.post("/jobs/add", json={"kwargs": {"a": 1, "b": 1}})
        assert response.status_code == 201, response.text
        assert (await wait_for_state(client, response.json()["run_id"]))["result"] == 2
    assert (tmp_path / "example.db").exists()


async def test_fastapi_app_adds_in_a_typed_job(tmp_path: Path) -> None:
    async with fastapi_client(fastapi_app.create_app(sqlite_url(tmp_path))) as client:
        response = await client.post("/add", json={"a": 2, "b": 3})
        assert response.status_code == 200, response.text
        assert response.json() == {"run_id": 1, "sum": 5}
        state = (await client.get("/runs/1")).json()
        assert (state["job"], state["status"], state["result"]) == ("add", "succeeded", 5)
        assert (await client.post("/add", json={"a": "two", "b": 3})).status_code == 422


async def test_fastapi_app_shows_progress_and_retries(tmp_path: Path) -> None:
    async with fastapi_client(fastapi_app.create_app(sqlite_url(tmp_path))) as client:
        response = await client.post("/jobs/sleep", json={"args": [0.2]})
        assert response.status_code == 201, response.text
        state = await wait_for_state(client, response.json()["run_id"])
        assert (state["status"], state["result"], state["progress"]) == ("succeeded", 0.2, 1.0)

        # The first attempt raises Retry(after=0.5): a second attempt half a second later.
        response = await client.post("/jobs/deliver", json={"args": ["hi"]})
        assert response.status_code == 201, response.text
        state = await wait_for_state(client, response.json()["run_id"])
        assert state["status"] == "succeeded", state
        assert state["result"] == "delivered 'hi' on attempt 2"
        assert state["attempts"] == 2


def test_fastapi_app_serves_two_test_clients_in_a_row(tmp_path: Path) -> None:
    # Each `with TestClient(app)` runs the lifespan on an event loop of its own (in a thread
    # of its own): the module-level jd is given a new engine and started again each time,
    # which 0.1 refused ("up() can be called once per object").
    app = fastapi_app.create_app(sqlite_url(tmp_path))
    loops: list[asyncio.AbstractEventLoop] = []

    @app.get("/loop")
    async def loop() -> None:
        loops.append(asyncio.get_running_loop())

    instance_ids = []
    for run_id, (a, b) in enumerate([(2, 3), (40, 2)], start=1):
        with TestClient(app) as client:
            instance_ids.append(fastapi_app.jd.instance_id)
            assert client.get("/loop").status_code == 200
            response = client.post("/add", json={"a": a, "b": b})  # creates a run, awaits it
            assert response.status_code == 200, response.text
            assert response.json() == {"run_id": run_id, "sum": a + b}
            assert client.get("/runs/1").json()["result"] == 5  # the first client's run is still there
    assert instance_ids[0] != instance_ids[1]
    assert len(loops) == 2
    assert loops[0] is not loops[1]


async def test_fastapi_apps_on_two_databases_in_a_row(tmp_path: Path) -> None:
    # One module-level jd, two apps from create_app on two SQLite files, one after the
    # other: each lifespan points jd at its own database (use_engine) and starts it again.
    for name, (a, b) in [("first.db", (2, 3)), ("second.db", (40, 2))]:
        async with fastapi_client(fastapi_app.create_app(sqlite_url(tmp_path, name))) as client:
            assert fastapi_app.jd.engine.url.database == str(tmp_path / name)
            response = await client.post("/add", json={"a": a, "b": b})
            assert response.status_code == 200, response.text
            assert response.json() == {"run_id": 1, "sum": a + b}  # the first run of its database
    assert stored_runs(tmp_path / "first.db") == [(1, "add", "[2,3]")]
    assert stored_runs(tmp_path / "second.db") == [(1, "add", "[40,2]")]


# ---------------------------------------------------------------------------- aiohttp


async def poll_state(client: AiohttpClient[Any, Any], run_id: int) -> dict[str, Any]:
    """Poll ``GET /runs/{run_id}`` until the run has finished; fail after WAIT seconds."""
    try:
        async with asyncio.timeout(WAIT):
            while True:
                response = await client.get(f"/runs/{run_id}")
                assert response.status == 200, await response.text()
                state: dict[str, Any] = await response.json()
                if state["finished"]:
                    return state
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"run {run_id} did not finish within {WAIT}s")


async def test_aiohttp_app_creates_and_reports_runs(tmp_path: Path) -> None:
    app = aiohttp_app.create_app(sqlite_url(tmp_path))
    async with AiohttpClient(TestServer(app)) as client:
        response = await client.post("/jobs/sleep", json={"args": [0.1]})
        assert response.status == 201, await response.text()
        run_id = (await response.json())["run_id"]
        assert isinstance(run_id, int)

        state = await poll_state(client, run_id)
        assert state["status"] == "succeeded"
        assert state["result"] == 0.1
        assert state["run_id"] == run_id
        assert state["progress"] == 1.0  # the last of its ten reports
        assert state["started_at"] is not None
        assert state["completed_at"] is not None

        response = await client.post("/jobs/add", json={"kwargs": {"a": 40, "b": 2}})
        assert response.status == 201, await response.text()
        state = await poll_state(client, (await response.json())["run_id"])
        assert state["result"] == 42


async def test_aiohttp_app_rejects_bad_requests(tmp_path: Path) -> None:
    app = aiohttp_app.create_app(sqlite_url(tmp_path))
    async with AiohttpClient(TestServer(app)) as client:
        assert (await client.post("/jobs/no-such-job")).status == 404
        assert (await client.post("/jobs/add", json={"args": [1]})).status == 422
        assert (await client.post("/jobs/add", data=b"not json")).status == 400
        assert (await client.get("/runs/999")).status == 404
        assert (await client.get("/runs/abc")).status == 400
        assert (await client.post("/add", json={"a": "two", "b": 3})).status == 422
        assert (await client.post("/add", json=[2, 3])).status == 400


def test_aiohttp_apps_in_a_row_on_two_databases_and_event_loops(tmp_path: Path) -> None:
    # One module-level jd, two apps from create_app on two SQLite files, each served on an
    # event loop of its own (asyncio.run), one after the other: each app's cleanup_ctx points
    # jd at its database (use_engine) and starts it again.
    async def add_in(name: str, a: int, b: int) -> Any:
        app = aiohttp_app.create_app(sqlite_url(tmp_path, name))
        async with AiohttpClient(TestServer(app)) as client:
            assert aiohttp_app.jd.engine.url.database == str(tmp_path / name)
            response = await client.post("/add", json={"a": a, "b": b})  # creates a run, awaits it
            assert response.status == 200, await response.text()
            return await response.json()

    first = asyncio.run(add_in("first.db", 2, 3))
    second = asyncio.run(add_in("second.db", 40, 2))
    assert first == {"run_id": 1, "sum": 5}
    assert second == {"run_id": 1, "sum": 42}  # the first run of its own database
    assert stored_runs(tmp_path / "first.db") == [(1, "add", "[2,3]")]
    assert stored_runs(tmp_path / "second.db") == [(1, "add", "[40,2]")]


def test_the_worker_example_runs_under_jobsd_worker(tmp_path: Path) -> None:
    # One process creates runs, `jobsd worker --burst` (the example's worker module) runs them.
    url = f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}"
    pythonpath = os.pathsep.join(filter(None, [str(EXAMPLES.parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath, "JOBSD_DATABASE_URL": url}
    create = (
        "import asyncio\n"
        "from examples.worker import jd, add\n"
        "async def main():\n"
        "    async with jd:\n"
        "        print(await add.create_run(2, 3).run(), flush=True)\n"
        "asyncio.run(main())\n"
    )
    made = subprocess.run(
        [sys.executable, "-c", create],
        env=env,
        cwd=EXAMPLES.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    run_id = int(made.stdout.strip())
    worker = subprocess.run(
        [sys.executable, "-m", "jobsd_async", "worker", "--app", "examples.worker:jd", "--burst"],
        env=env,
        cwd=EXAMPLES.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode == 0, worker.stderr
    assert "jobs: announce, add, sleep" in worker.stdout
    shown = subprocess.run(
        [sys.executable, "-m", "jobsd_async", "runs", "show", str(run_id), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["run"]["result"] == 5
