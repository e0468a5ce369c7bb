"""The dashboard in a real browser: headless Chromium (the system's) driven by Playwright.

It loads every page over a database with runs in every status, filters, opens a chain,
cancels a run from the page and watches another page change live without a reload, and
checks that a hostile argument is shown as text (no script of it ever runs).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import IN_CI, MakeJobsD
from dashboard_server import served

from jobsd_async import JobsD, RunStatus
from jobsd_async.dashboard import create_dashboard

CHROMIUM = os.environ.get("JOBSD_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = os.path.exists(CHROMIUM)
HOSTILE = "<script>alert('owned')</script><img src=x onerror=alert(1)>"


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        if IN_CI:
            pytest.fail("CI=true and playwright is not installed")
        pytest.skip("playwright is not installed")
    if not HAVE_CHROMIUM:
        if IN_CI:
            pytest.fail(f"CI=true and Chromium is not installed at {CHROMIUM}")
        pytest.skip(f"no Chromium at {CHROMIUM}")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()


@pytest.mark.cluster
async def test_the_dashboard_in_a_browser(make_jobsd: MakeJobsD, browser: Any) -> None:
    jd = make_jobsd(workers=4)
    release = asyncio.Event()

    @jd.job(name="echo")
    async def echo(value: str) -> str:
        return value

    @jd.job(name="fail", retries_error_limit=0)
    async def fail(value: str) -> None:
        raise ValueError(value)

    @jd.job(name="block")
    async def block() -> None:
        await release.wait()

    async with jd:
        hostile = await echo.create_run(HOSTILE).run()
        failed = await fail.create_run(HOSTILE).run()
        waiting = await echo.create_run("later").queue("mail").run_after(3600)
        other = await echo.create_run("other").run_after(3600)
        await block.create_run().run()
        await jd.wait_for_run(hostile, timeout=10)
        await jd.wait_for_run(failed, timeout=10)
        try:
            async with served(create_dashboard(jd, live_interval=0.1)) as url:
                await drive(browser, url, jd, hostile=hostile, failed=failed, waiting=waiting, other=other)
        finally:
            release.set()


async def drive(
    browser: Any, url: str, jd: JobsD, *, hostile: int, failed: int, waiting: int, other: int
) -> None:
    dialogs: list[str] = []
    context = await browser.new_context()
    page = await context.new_page()

    async def on_dialog(dialog: Any) -> None:
        dialogs.append(f"{dialog.type}: {dialog.message}")
        await (dialog.accept() if dialog.type == "confirm" else dialog.dismiss())

    page.on("dialog", on_dialog)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    for path, heading in [
        ("/", "Overview"),
        ("/runs", "Runs"),
        ("/schedules", "Schedules"),
        ("/queues", "Queues"),
        ("/instances", "Instances"),
        ("/enqueue", "Enqueue a run"),
    ]:
        response = await page.goto(url + path)
        assert response is not None and response.status == 200, path
        assert await page.inner_text("h1") == heading

    # Filter the runs list down to the failed run.
    await page.goto(url + "/runs")
    await page.select_option("select[name=status]", "failed")
    await page.click("form.filters button[type=submit]")
    await page.wait_for_url("**/runs?status=failed**")
    links = await page.locator("table.runs tbody td:first-child a").all_inner_texts()
    assert links == [str(failed)]

    # Open its chain: the attempt, its error and its traceback, all as text.
    await page.click(f"text={failed}")
    await page.wait_for_url(f"**/runs/{failed}")
    assert "ValueError" in await page.inner_text("dl.fields")
    assert HOSTILE in await page.inner_text("pre.args")
    await page.goto(url + f"/runs/{hostile}")
    assert HOSTILE in await page.inner_text("pre.result")
    assert await page.locator("img[src=x]").count() == 0

    # One page watches a pending run; a second page cancels it with its button.
    await page.goto(url + f"/runs/{waiting}")
    await page.evaluate("window.notReloaded = true")
    assert await page.inner_text("h1 .status") == "pending"
    live = page.locator("#live.on")
    await live.wait_for(timeout=10_000)
    other_page = await context.new_page()
    other_page.on("dialog", on_dialog)
    await other_page.goto(url + f"/runs/{waiting}")
    await other_page.click("form[action$='/cancel'] button")
    await other_page.locator("p.message", has_text="cancelled").wait_for(timeout=10_000)
    await page.wait_for_function(
        "document.querySelector('h1 .status').textContent === 'cancelled'", timeout=10_000
    )
    assert await page.evaluate("window.notReloaded") is True, "the page reloaded instead of updating"
    assert (await jd.get_run_state(waiting)).status is RunStatus.CANCELLED

    # A change made elsewhere (the API) shows up too.
    await page.goto(url + "/runs?status=pending")
    await page.evaluate("window.notReloaded = true")
    await live.wait_for(timeout=10_000)
    assert await page.locator(f"a[href$='/runs/{other}']").count() == 1
    await jd.cancel_run(other)
    await page.locator(f"a[href$='/runs/{other}']").wait_for(state="detached", timeout=10_000)
    assert await page.evaluate("window.notReloaded") is True

    # Back, after live refreshes, shows the whole page again (not a cached refresh).
    await page.goto(url + "/queues")
    await page.go_back()
    assert await page.locator("header nav").count() == 1

    assert [d for d in dialogs if not d.startswith("confirm")] == [], "a script of a hostile value ran"
    assert any(d.startswith("confirm: Cancel run") for d in dialogs)
    assert errors == []
    await context.close()
