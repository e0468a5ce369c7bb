"""Scale-out: N worker processes against one PostgreSQL, directly or through PgBouncer.

    python benchmarks/scale_out.py --instances 40 --max-connections 1
    python benchmarks/scale_out.py --instances 100 --via pgbouncer --runs 20000

Starts ``--instances`` worker processes (this file run with ``--worker``), each one
``JobsD(workers=--workers, max_connections=--max-connections)`` on an engine whose pool
holds no more than jobsd needs.  With ``--via pgbouncer`` a real PgBouncer in transaction
mode (the Debian package; started here, ``default_pool_size`` ``--bouncer-pool``) stands in
front of the server and the workers poll (``listen=False``: LISTEN does not work through
it).  Once every worker is up, this process creates ``--runs`` runs at ``--rate`` per second
and waits until all have finished.  It samples ``pg_stat_activity`` every second meanwhile.

Reported (and written with ``--json``):

- completed runs, duplicates (a run executed more than once: the workers' own accounts
  of the rows they executed, by chain, so a re-run after a hand-over counts) and stuck
  rows (not finished when the wait ended);
- peak server connections (client backends) and what their wait events were (lock waits
  in particular);
- statements the server refused (``too many clients`` and other errors in the workers'
  logs);
- claim latency: from a run's creation to its start, percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from jobsd_async import JobsD, RunInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

URL = os.environ.get("JOBSD_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
REFUSALS = ("too many clients", "too many connections", "refused a new connection")


def bounced_kwargs() -> dict[str, Any]:
    """asyncpg behind a transaction-mode pooler: no prepared statement outlives a transaction."""
    return {
        "connect_args": {
            "statement_cache_size": 0,
            "prepared_statement_cache_size": 0,
            "prepared_statement_name_func": lambda: f"__asyncpg_{uuid.uuid4()}__",
        }
    }


async def worker(args: argparse.Namespace) -> None:
    """One worker process: runs ``noop`` until SIGTERM, then prints the run ids it executed."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    kwargs = bounced_kwargs() if args.bounced else {}
    # The pool never needs more than jobsd holds (its connections and the LISTEN one).
    engine = create_async_engine(args.url, pool_size=args.max_connections + 1, max_overflow=0, **kwargs)
    jd = JobsD(
        engine,
        table_prefix=args.prefix,
        workers=args.workers,
        max_connections=args.max_connections,
        poll_interval=args.poll_interval,
        listen=not args.bounced,
        run_timeout=120,
    )
    executed: list[int] = []

    @jd.job(name="noop")
    async def noop(info: RunInfo) -> None:
        executed.append(info.id)

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with jd:
        print("up", flush=True)
        await stop.wait()
    await engine.dispose()
    print(json.dumps(executed), flush=True)


class Sampler:
    """``pg_stat_activity`` once a second: client backends and the wait events of busy ones."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self.peak = 0
        self.series: list[int] = []
        self.waits: collections.Counter[str] = collections.Counter()
        self.startup_waits: collections.Counter[str] = collections.Counter()

    def started(self) -> None:
        """The workers are up: what was waited on so far was their start (the upgrade lock)."""
        self.startup_waits, self.waits = self.waits, collections.Counter()

    async def run(self, stop: asyncio.Event) -> None:
        async with self._engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            while not stop.is_set():
                rows = (
                    await conn.execute(
                        text(
                            "SELECT state, wait_event_type, wait_event FROM pg_stat_activity"
                            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                        )
                    )
                ).all()
                self.series.append(len(rows))
                self.peak = max(self.peak, len(rows))
                for state, kind, name in rows:
                    if state not in ("idle", None) and kind is not None:
                        self.waits[f"{kind}:{name}"] += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)


async def start_workers(
    args: argparse.Namespace, url: str, prefix: str, logs: Path, procs: list[Any]
) -> None:
    """Start the workers into ``procs`` and wait until each is up."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(Path.cwd()), os.environ.get("PYTHONPATH")])),
    }
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--url",
        url,
        "--prefix",
        prefix,
        "--workers",
        str(args.workers),
        "--max-connections",
        str(args.max_connections),
        "--poll-interval",
        str(args.poll_interval),
        *(["--bounced"] if args.via == "pgbouncer" else []),
    ]
    for n in range(args.instances):
        stderr = (logs / f"worker{n}.log").open("wb")
        procs.append(
            await asyncio.create_subprocess_exec(
                *command, stdout=asyncio.subprocess.PIPE, stderr=stderr, env=env
            )
        )
    for proc in procs:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 300)
        if line.strip() != b"up":
            raise RuntimeError(f"a worker did not start (see its log in {logs})")


async def stop_workers(procs: list[Any]) -> list[list[int]]:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    accounts = []
    for proc in procs:
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        lines = out.decode().strip().splitlines()
        accounts.append(json.loads(lines[-1]) if lines and lines[-1].startswith("[") else [])
    return accounts


async def main(args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"so{uuid.uuid4().hex[:8]}_"
    admin = create_async_engine(URL)
    logs = Path(tempfile.mkdtemp(prefix="jobsd-scale-out-"))
    bouncer = None
    if args.via == "pgbouncer":
        from pgbouncer import PgBouncer

        bouncer = PgBouncer(URL, pool_size=args.bouncer_pool)
        await bouncer.start()
    url = bouncer.url() if bouncer is not None else URL
    producer = JobsD(admin, table_prefix=prefix, workers=0, max_connections=2)
    producer.register_job("noop", _noop)
    stop_sampling = asyncio.Event()
    sampler = Sampler(admin)
    procs: list[Any] = []
    try:
        async with producer:
            sampling = asyncio.create_task(sampler.run(stop_sampling))
            began = time.perf_counter()
            await start_workers(args, url, prefix, logs, procs)
            sampler.started()
            print(f"{args.instances} workers up in {time.perf_counter() - began:.1f}s", file=sys.stderr)
            began = time.perf_counter()
            batch = max(1, args.rate // 10)
            created = 0
            while created < args.runs:
                count = min(batch, args.runs - created)
                await producer.create_runs("noop", [() for _ in range(count)])
                created += count
                await asyncio.sleep(max(0.0, began + created / args.rate - time.perf_counter()))
            runs = producer.metadata.tables[f"{prefix}runs"]
            deadline = time.perf_counter() + args.wait
            open_rows = args.runs
            while time.perf_counter() < deadline:
                async with admin.connect() as conn:
                    open_rows = (
                        await conn.execute(
                            select(func.count()).select_from(runs).where(runs.c.run_completed_at.is_(None))
                        )
                    ).scalar_one()
                if open_rows == 0:
                    break
                await asyncio.sleep(0.5)
            elapsed = time.perf_counter() - began
            accounts = await stop_workers(procs)
            stop_sampling.set()
            await sampling
            async with admin.connect() as conn:
                latencies = [
                    float(s)
                    for (s,) in await conn.execute(
                        select(func.extract("epoch", runs.c.run_started_at - runs.c.created_at)).where(
                            runs.c.run_started_at.is_not(None)
                        )
                    )
                ]
                chain_of = {
                    int(row_id): int(chain)
                    for row_id, chain in await conn.execute(
                        select(runs.c.id, func.coalesce(runs.c.origin_id, runs.c.id))
                    )
                }
                completed = (
                    await conn.execute(
                        select(func.count()).select_from(runs).where(runs.c.run_completed_at.is_not(None))
                    )
                ).scalar_one()
    finally:
        for proc in procs:  # a failed start leaves some running
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if bouncer is not None:
            await bouncer.stop()
        async with admin.begin() as conn:
            for name in ("runs", "instances", "migrations"):
                await conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{prefix}{name}"')
        await admin.dispose()
    # Per chain: a run re-run after its instance was taken for dead counts as a duplicate.
    executions = collections.Counter(chain_of[row_id] for account in accounts for row_id in account)
    refused = count_refusals(logs)
    latencies.sort()

    def pct(p: float) -> float:
        return (
            round(1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))], 1) if latencies else 0.0
        )

    return {
        "via": args.via,
        "instances": args.instances,
        "workers": args.workers,
        "max_connections": args.max_connections,
        "runs": args.runs,
        "rate": args.rate,
        "completed": completed,
        "chains": len(set(chain_of.values())),
        "executed": sum(executions.values()),
        "duplicates": sum(1 for n in executions.values() if n > 1),
        "stuck": open_rows,
        "seconds": round(elapsed, 1),
        "peak_server_connections": sampler.peak,
        "median_server_connections": statistics.median(sampler.series) if sampler.series else 0,
        "lock_wait_samples": sum(n for k, n in sampler.waits.items() if k.startswith("Lock:")),
        "wait_events": dict(sampler.waits.most_common(8)),
        "wait_events_while_starting": dict(sampler.startup_waits.most_common(4)),
        "refused": refused,
        "claim_latency_ms": {"p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99), "max": pct(1.0)},
        "worker_logs": str(logs),
    }


def count_refusals(logs: Path) -> dict[str, int]:
    """How often the workers' logs mention a refused connection or statement."""
    refused: collections.Counter[str] = collections.Counter()
    for log in logs.glob("worker*.log"):
        body = log.read_text(errors="replace")
        for needle in REFUSALS:
            refused[needle] += body.count(needle)
    return dict(refused)


async def _noop(info: RunInfo) -> None:
    return None


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=40)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--max-connections", type=int, default=1)
    parser.add_argument("--via", choices=["direct", "pgbouncer"], default="direct")
    parser.add_argument("--bouncer-pool", type=int, default=20, help="PgBouncer default_pool_size")
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=1000, help="runs created per second")
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--wait", type=float, default=300.0, help="seconds to wait for the last runs")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", default=URL, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--bounced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(worker(args))
        return
    result = asyncio.run(main(args))
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    cli()
