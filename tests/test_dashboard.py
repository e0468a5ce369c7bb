"""The dashboard, route by route and action by action, over real databases (httpx)."""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from conftest import MakeJobsD, eventually, fetch_runs
from dashboard_server import served
from sqlalchemy.ext.asyncio import create_async_engine

from jobsd_async import JobsD, RunInfo, RunStatus, every
from jobsd_async._admin import Admin
from jobsd_async.dashboard import create_dashboard
from jobsd_async.dashboard._live import ChangeFeed

JOBSD = (sys.executable, "-m", "jobsd_async")
HOSTILE = "<script>alert('x')</script> \"quoted\" & 'single'"
ESCAPED = "&lt;script&gt;alert("


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dash.test")


async def csrf(c: httpx.AsyncClient) -> str:
    """The CSRF token the pages carry (and set as a cookie)."""
    page = await c.get("/runs")
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, "no CSRF token on the page"
    return found.group(1)


@pytest.fixture
async def cluster(make_jobsd: MakeJobsD) -> AsyncIterator[JobsD]:
    """A started instance with a job in every shape the pages show."""
    jd = make_jobsd(workers=4, run_timeout=5)
    release = asyncio.Event()

    @jd.job(name="echo")
    async def echo(value: str) -> str:
        return value

    @jd.job(name="fail", retries_error_limit=0)
    async def fail(value: str) -> None:
        raise ValueError(HOSTILE)

    @jd.job(name="block")
    async def block(info: RunInfo) -> None:
        await release.wait()

    async with jd:
        yield jd
        release.set()


async def every_status(jd: JobsD) -> dict[str, int]:
    ids = {
        "succeeded": await jd.create_run("echo", HOSTILE).unique(HOSTILE).run(),
        "failed": await jd.create_run("fail", "x").run(),
        "pending": await jd.create_run("echo", "later").queue("mail").priority(4).run_after(3600),
        "running": await jd.create_run("block").run(),
    }
    ids["cancelled"] = await jd.create_run("echo", "never").run_after(3600)
    await jd.cancel_run(ids["cancelled"])
    for name in ("succeeded", "failed"):
        await jd.wait_for_run(ids[name], timeout=10)
    await eventually(lambda: running(jd, ids["running"]), what="the blocking run starts")
    return ids


async def running(jd: JobsD, run_id: int) -> bool:
    return (await jd.get_run_state(run_id)).status is RunStatus.RUNNING


async def test_every_page_shows_runs_in_every_status_with_everything_escaped(cluster: JobsD) -> None:
    ids = await every_status(cluster)
    async with client(create_dashboard(cluster)) as c:
        pages = {
            path: await c.get(path)
            for path in ("/", "/runs", "/instances", "/queues", "/schedules", "/enqueue")
        }
        chains = {name: await c.get(f"/runs/{run_id}") for name, run_id in ids.items()}
    for path, page in {**pages, **chains}.items():
        assert page.status_code == 200, (path, page.text[:500])
        assert "<script>alert" not in page.text, f"{path} renders a hostile value as markup"
    listed = pages["/runs"].text
    for name, run_id in ids.items():
        assert f'href="/runs/{run_id}"' in listed
        assert f"status-{name}" in listed
    assert ESCAPED in listed  # the unique name, as text
    assert ESCAPED in chains["failed"].text and "ValueError" in chains["failed"].text
    assert "traceback" in chains["failed"].text
    assert ESCAPED in chains["succeeded"].text  # the result
    assert "mail" in chains["pending"].text and "Run now" in chains["pending"].text
    assert "Cancel" in chains["running"].text and "Retry" in chains["failed"].text
    assert f'href="/runs/{ids["running"]}"' in pages["/instances"].text  # what the instance runs now
    assert "mail" in pages["/queues"].text
    assert f'href="/runs/{ids["pending"]}"' in pages["/schedules"].text  # coming up
    overview = pages["/"].text
    assert re.search(r'id="pending">\s*1<', overview) and re.search(r'id="running">\s*1<', overview)


async def test_filters_and_pages_of_runs(cluster: JobsD) -> None:
    many = await cluster.create_runs("echo", [(f"v{i}",) for i in range(55)])
    special = await cluster.create_run("echo", "needle-ü").run()
    async with client(create_dashboard(cluster)) as c:
        first = await c.get("/runs", params={"job": "echo"})
        older = re.search(r'href="/runs\?([^"]+)">Older runs', first.text)
        assert older, "no link to the next page"
        second = await c.get("/runs?" + older.group(1).replace("&amp;", "&"))
        by_args = await c.get("/runs", params={"args": "needle-ü"})
        by_status = await c.get("/runs", params={"status": "pending", "job": "nope"})
        bad = await c.get("/runs", params={"since": "yesterday-ish"})

    def listed(page: httpx.Response) -> list[int]:
        return [int(i) for i in re.findall(r'<td><a href="/runs/(\d+)">', page.text)]

    assert listed(first) == sorted([*many, special], reverse=True)[:50]
    assert listed(second) == sorted(many, reverse=True)[49:]  # the rest, newest first
    assert listed(by_args) == [special]
    assert listed(by_status) == []
    assert bad.status_code == 400 and "not an ISO 8601 time" in bad.text


async def test_actions_change_the_runs_and_need_the_csrf_token(cluster: JobsD) -> None:
    ids = await every_status(cluster)
    later = await cluster.create_run("echo", "soon").run_after(3600)
    async with client(create_dashboard(cluster)) as c:
        token = await csrf(c)
        refused = await c.post(f"/runs/{ids['pending']}/cancel", data={"csrf": "forged"})
        foreign = await c.post(
            f"/runs/{ids['pending']}/cancel", data={"csrf": token}, headers={"Origin": "https://evil.example"}
        )
        assert (refused.status_code, foreign.status_code) == (403, 403)
        assert (await cluster.get_run_state(ids["pending"])).status is RunStatus.PENDING

        cancelled = await c.post(f"/runs/{ids['pending']}/cancel", data={"csrf": token})
        assert cancelled.status_code == 303 and cancelled.headers["location"] == f"/runs/{ids['pending']}"
        assert await message(c, cancelled) == "cancelled"
        assert (await cluster.get_run_state(ids["pending"])).status is RunStatus.CANCELLED

        retried = await c.post(f"/runs/{ids['failed']}/retry", data={"csrf": token})
        new = int(re.search(r"/runs/(\d+)", retried.headers["location"]).group(1))  # type: ignore[union-attr]
        assert new != ids["failed"] and (await cluster.get_run_state(new)).job == "fail"

        now = await c.post(f"/runs/{later}/run-now", data={"csrf": token})
        assert now.status_code == 303
        assert (await cluster.wait_for_run(later, timeout=10)).result == "soon"

        paused = await c.post("/queues/pause", data={"csrf": token, "queue": "mail"})
        assert await message(c, paused) == "queue mail paused"
        assert [q.name for q in await cluster.list_queues() if q.paused] == ["mail"]
        await c.post("/queues/resume", data={"csrf": token, "queue": "mail"})
        assert not [q for q in await cluster.list_queues() if q.paused]

        waiting = [await cluster.create_run("echo", f"w{i}").queue("bulk").run_after(3600) for i in range(3)]
        bulk = await c.post("/runs/bulk", data={"csrf": token, "queue": "bulk", "action": "cancel"})
        assert await message(c, bulk) == "3 runs cancelled"
        # Retrying the same selection retries none of them: cancelled runs stay cancelled.
        again = await c.post("/runs/bulk", data={"csrf": token, "queue": "bulk", "action": "retry"})
        assert await message(c, again) == "0 runs retried"
        assert (await cluster.wait_for_run(new, timeout=10)).status is RunStatus.FAILED
        chains_before = await chains_of(cluster, "fail")
        failed_again = await c.post("/runs/bulk", data={"csrf": token, "job": "fail", "action": "retry"})
        # Two failed chains share a unique name: while the first one's retry is pending, the
        # second's is the same run; once it has run, a new one.
        retried_count = int((await message(c, failed_again)).split()[0])
        assert retried_count in (1, 2)
        assert await chains_of(cluster, "fail") == chains_before + retried_count
    assert {(await cluster.get_run_state(i)).status for i in waiting} == {RunStatus.CANCELLED}


async def chains_of(jd: JobsD, job: str) -> int:
    return len({r["origin_id"] or r["id"] for r in await fetch_runs(jd) if r["job"] == job})


async def message(c: httpx.AsyncClient, redirect: httpx.Response) -> str:
    """The message an action left for the page it redirected to (shown once)."""
    assert redirect.status_code == 303, redirect.text
    page = await c.get(redirect.headers["location"])
    found = re.search(r'<p class="message">([^<]*)</p>', page.text)
    assert found, "no message"
    assert '<p class="message">' not in (await c.get(redirect.headers["location"])).text  # once
    return found.group(1)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"read_only": True}, "read"),
        ({"authorize": lambda request: "read"}, "read"),
        ({"authorize": lambda request: request.headers.get("x-user") == "ops"}, "denied"),
        ({"basic_auth": ("ops", "s3cret")}, "basic"),
    ],
)
async def test_access_is_what_the_settings_allow(
    cluster: JobsD, options: dict[str, Any], expected: str
) -> None:
    later = await cluster.create_run("echo", "x").run_after(3600)
    async with client(create_dashboard(cluster, **options)) as c:
        page = await c.get(f"/runs/{later}")
        if expected == "read":
            assert page.status_code == 200 and "read-only" in page.text and "<button" not in page.text
            token = c.cookies.get("jobsd_csrf")
            refused = await c.post(f"/runs/{later}/cancel", data={"csrf": token or ""})
            assert refused.status_code == 403
        elif expected == "denied":
            assert page.status_code == 403
            assert (await c.get(f"/runs/{later}", headers={"x-user": "ops"})).status_code == 200
        else:
            assert page.status_code == 401 and page.headers["www-authenticate"].startswith("Basic")
            wrong = base64.b64encode(b"ops:guess").decode()
            right = base64.b64encode(b"ops:s3cret").decode()
            assert (await c.get("/", headers={"Authorization": f"Basic {wrong}"})).status_code == 401
            assert (await c.get("/", headers={"Authorization": f"Basic {right}"})).status_code == 200
    assert (await cluster.get_run_state(later)).status is RunStatus.PENDING


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"job": "echo", "args": "[1,", "kwargs": "{}"}, "arguments must be JSON"),
        ({"job": "echo", "args": "{}", "kwargs": "{}"}, "must be a JSON array"),
        ({"job": "echo", "args": "[1, 2]", "kwargs": "{}"}, "JobArgsMismatchError"),
        ({"job": "nope", "args": "[]", "kwargs": "{}"}, "UnknownJobError"),
        ({"job": "echo", "args": '["x"]', "kwargs": "{}", "priority": "high"}, "priority must be an integer"),
        ({"job": "echo", "args": '["x"]', "kwargs": "{}", "queue": "a,b"}, "comma"),
    ],
)
async def test_enqueue_validates_like_create_run_and_writes_nothing_bad(
    cluster: JobsD, form: dict[str, str], error: str
) -> None:
    async with client(create_dashboard(cluster)) as c:
        token = await csrf(c)
        answer = await c.post("/enqueue", data={**form, "csrf": token})
    assert answer.status_code == 400 and error in answer.text
    assert await fetch_runs(cluster) == []


async def test_enqueue_creates_the_run(cluster: JobsD) -> None:
    async with client(create_dashboard(cluster)) as c:
        token = await csrf(c)
        answer = await c.post(
            "/enqueue", data={"csrf": token, "job": "echo", "args": '["hi"]', "queue": "q", "priority": "3"}
        )
    run_id = int(re.search(r"/runs/(\d+)", answer.headers["location"]).group(1))  # type: ignore[union-attr]
    state = await cluster.wait_for_run(run_id, timeout=10)
    assert (state.result, state.queue, state.priority) == ("hi", "q", 3)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/runs/%C2%B2", 404),  # a superscript two: a digit, not an id
        ("/runs/%D9%A1", 404),  # an Arabic-Indic one
        ("/runs/99999999999999999999", 404),
        ("/runs/0", 404),
        ("/runs?before=%C2%B2", 400),
        ("/runs?before=9999999999999999999", 400),
        ("/runs?job=a%00b", 400),
        ("/runs?args=" + "x" * 1001, 400),
        ("/runs?since=0001-01-01T00:00:00%2B14:00", 400),
        ("/runs?until=9999-12-31T23:59:59-14:00", 400),
        ("/runs?status=lost", 400),
    ],
)
async def test_odd_requests_get_an_answer_not_an_error(cluster: JobsD, path: str, status: int) -> None:
    async with client(create_dashboard(cluster)) as c:
        answer = await c.get(path)
        posted = await c.post(path + "/cancel", data={"csrf": await csrf(c)}) if status == 404 else None
    assert answer.status_code == status, answer.text[:300]
    assert "SELECT" not in answer.text
    assert posted is None or posted.status_code == 404


async def test_deeply_nested_arguments_are_refused(cluster: JobsD) -> None:
    async with client(create_dashboard(cluster)) as c:
        answer = await c.post("/enqueue", data={"csrf": await csrf(c), "job": "echo", "args": "[" * 100_000})
    assert answer.status_code == 400 and "nested" in answer.text
    assert await fetch_runs(cluster) == []


async def test_active_scheduled_chains_are_listed_however_many_ended(cluster: JobsD) -> None:
    active = await cluster.create_run("echo", "tick").schedule(every(3600)).run()
    ended = [await cluster.create_run("echo", f"e{i}").schedule(every(3600)).run() for i in range(5)]
    for run_id in ended:
        await cluster.cancel_run(run_id)
    async with client(create_dashboard(cluster)) as c:
        page = await c.get("/schedules")
    listed = re.findall(r'<td><a href="/runs/(\d+)">', page.text.split("Coming up")[0])
    assert listed == [str(active)]


async def test_the_feed_keeps_watching_when_a_page_opens_as_another_closes(cluster: JobsD) -> None:
    feed = ChangeFeed(Admin(cluster.engine, table_prefix=cluster._config.table_prefix), interval=0.05)
    first = feed.listening()
    await first.__aenter__()
    leaving = asyncio.ensure_future(first.__aexit__(None, None, None))
    await asyncio.sleep(0)  # the first page is leaving: its watcher is being stopped
    async with feed.listening():
        await leaving
        seen = feed.version
        await asyncio.sleep(0.2)  # a first fingerprint
        await cluster.create_run("echo", "x").run_after(3600)
        assert await feed.next_change(seen, 5) != seen, "the feed stopped watching"


async def test_the_event_stream_announces_changes(cluster: JobsD) -> None:
    app = create_dashboard(cluster, live_interval=0.1)
    async with (
        served(app) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as c,
        c.stream("GET", "/events") as events,
    ):
        assert events.headers["content-type"].startswith("text/event-stream")
        lines = events.aiter_lines()
        assert await anext(lines) == "retry: 2000"
        created = asyncio.ensure_future(create_when_listening(cluster))
        async with asyncio.timeout(10):
            async for line in lines:
                if line == "event: change":
                    break
        await created


async def create_when_listening(jd: JobsD) -> None:
    await asyncio.sleep(0.3)  # the feed reads its first fingerprint: a change comes after it
    await jd.create_run("echo", "new").run_after(3600)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(TypeError, match="JobsD or an AsyncEngine"):
        create_dashboard("sqlite://")  # type: ignore[arg-type]
    engine = create_async_engine("sqlite+aiosqlite:///:memory:")
    with pytest.raises(ValueError, match="table_prefix"):
        create_dashboard(engine, table_prefix="bad prefix")
    with pytest.raises(ValueError, match="live_interval"):
        create_dashboard(engine, live_interval=0)
    with pytest.raises(TypeError, match="authorize"):
        create_dashboard(engine, authorize="admin")  # type: ignore[arg-type]


async def test_jobsd_dashboard_serves_it_with_basic_auth(cluster: JobsD, database_url: str) -> None:
    with socket.socket() as probe:  # a free port for the server
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    prefix = cluster._config.table_prefix
    server = await asyncio.create_subprocess_exec(
        *JOBSD, "dashboard", "--url", database_url, "--table-prefix", prefix, "--port", str(port),
        "--basic-auth", "ops:s3cret", "--read-only",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        banner = (await asyncio.wait_for(server.stdout.readline(), 30)).decode()
        assert f"http://127.0.0.1:{port}/ (read-only)" in banner
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            page = await retried(lambda: c.get("/runs"))
            assert page.status_code == 401
            page = await c.get("/runs", auth=("ops", "s3cret"))
            assert page.status_code == 200 and "read-only" in page.text
            rebound = await c.get("/runs", auth=("ops", "s3cret"), headers={"Host": "evil.example"})
            assert rebound.status_code == 400  # a name it does not answer to: DNS rebinding fails
    finally:
        server.terminate()
        await server.wait()


async def retried(get: Any) -> httpx.Response:
    """The answer of a server that may still be starting."""
    async with asyncio.timeout(20):
        while True:
            try:
                return await get()  # type: ignore[no-any-return]
            except httpx.TransportError:
                await asyncio.sleep(0.1)
