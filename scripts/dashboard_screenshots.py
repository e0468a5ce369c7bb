"""Regenerate the dashboard screenshots in docs/images/ (headless Chromium, Playwright).

    python scripts/dashboard_screenshots.py [--chromium /usr/bin/chromium]

Builds a small cluster on a temporary SQLite database (runs in every status, a paused
queue, a limited job), serves the dashboard on 127.0.0.1 and captures its main pages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
from pathlib import Path

import uvicorn
from playwright.async_api import async_playwright
from sqlalchemy.ext.asyncio import create_async_engine

from jobsd_async import JobsD, RunInfo, every
from jobsd_async.dashboard import create_dashboard

OUT = Path(__file__).resolve().parent.parent / "docs" / "images"
PAGES = {
    "overview": "/",
    "runs": "/runs",
    "run": "/runs/{failed}",
    "queues": "/queues",
    "instances": "/instances",
}


async def main(chromium: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp}/jobsd.db")
        jd = JobsD(engine, workers=4, poll_interval=0.2, retries_error_limit=1)
        release = asyncio.Event()

        @jd.job(name="send_invoice", queue="mail", max_running=2)
        async def send_invoice(customer: str, amount: float) -> str:
            return f"invoice for {customer}: {amount:.2f}"

        @jd.job(name="sync_customer", limit_key=lambda customer: customer, max_running=1)
        async def sync_customer(info: RunInfo, customer: str) -> None:
            await info.set_progress({"done": 40, "of": 100})
            await release.wait()

        @jd.job(name="charge_card")
        async def charge_card(card: str) -> None:
            raise ConnectionError(f"payment gateway refused card {card}")

        @jd.job(name="nightly_report", periodic=every(86400))
        async def nightly_report() -> None:
            pass

        async with jd:
            for i in range(12):
                await send_invoice.create_run(f"customer-{i}", 100 + i).run()
            await sync_customer.create_run("acme").run()
            failed = await charge_card.create_run("4242-XXXX").run()
            for i in range(3):
                await send_invoice.create_run(f"later-{i}", 10.0).priority(5).run_after(900 * (i + 1))
            await jd.wait_for_run(failed, timeout=30)
            await jd.pause_queue("reports")
            await jd.create_run("nightly_report").queue("reports").run()
            await asyncio.sleep(1.0)
            server = uvicorn.Server(
                uvicorn.Config(
                    create_dashboard(jd), host="127.0.0.1", port=0, log_level="warning", lifespan="off"
                )
            )
            task = asyncio.create_task(server.serve())
            while not server.started:
                if task.done():
                    task.result()  # it failed to start: say why
                await asyncio.sleep(0.05)
            url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
            try:
                async with async_playwright() as playwright:
                    browser = await playwright.chromium.launch(
                        executable_path=chromium, args=["--no-sandbox"]
                    )
                    page = await browser.new_page(viewport={"width": 1280, "height": 800})
                    OUT.mkdir(parents=True, exist_ok=True)
                    for name, path in PAGES.items():
                        await page.goto(url + path.format(failed=failed))
                        await page.screenshot(path=str(OUT / f"dashboard-{name}.png"), full_page=False)
                        print(f"docs/images/dashboard-{name}.png")
                    await browser.close()
            finally:
                release.set()
                server.should_exit = True
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    asyncio.run(main(parser.parse_args().chromium))
