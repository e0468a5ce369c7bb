"""OpenTelemetry (SPEC §6.4): a trace follows a request into its jobs, across instances and
retries; metrics count what happened; failed attempts keep their traceback.

The SDK's in-memory exporter and reader are installed as the global providers once, for
the rest of the session (OpenTelemetry allows setting them once per process).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeJobsD, eventually, fetch_runs
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from jobsd_async import Args, RunInfo, RunStatus
from jobsd_async._telemetry import notice_providers


class RecentSpans(InMemorySpanExporter):
    """Keeps the last spans only: once installed, the SDK records for every later test."""

    def export(self, spans: Any) -> Any:
        result = super().export(spans)
        while len(self._finished_spans) > 5000:
            self._finished_spans.popleft()
        return result


_EXPORTER = RecentSpans()
_READER = InMemoryMetricReader()


@pytest.fixture(scope="session")
def sdk() -> tuple[InMemorySpanExporter, InMemoryMetricReader]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[_READER]))
    notice_providers()
    return _EXPORTER, _READER


@pytest.fixture
def spans(sdk: tuple[InMemorySpanExporter, InMemoryMetricReader]) -> InMemorySpanExporter:
    sdk[0].clear()
    return sdk[0]


def job_name() -> str:
    return f"job_{uuid.uuid4().hex[:8]}"  # metrics accumulate over the session: a name of its own


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


async def test_a_run_created_in_a_request_is_processed_in_the_same_trace(
    make_jobsd: MakeJobsD, spans: InMemorySpanExporter
) -> None:
    jd = make_jobsd()
    job = job_name()
    seen: list[Any] = []

    @jd.job(name=job)
    async def work(info: RunInfo, n: int) -> int:
        seen.append(trace.get_current_span().get_span_context())
        return n

    tracer = trace.get_tracer("test")
    async with jd:
        with tracer.start_as_current_span("GET /orders", kind=SpanKind.SERVER) as request:
            run_id = await work.create_run(7).run()
        await jd.wait_for_run(run_id, timeout=10)

    await eventually(lambda: len(named(spans, f"process {job}")) == 1, what="the process span")
    (send,) = named(spans, f"send {job}")
    (process,) = named(spans, f"process {job}")
    trace_id = request.get_span_context().trace_id
    assert send.context is not None and process.context is not None
    assert send.context.trace_id == process.context.trace_id == trace_id
    assert send.parent is not None and send.parent.span_id == request.get_span_context().span_id
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert (send.kind, process.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    assert seen == [process.context], "the job's current span is not its attempt's span"
    attributes = dict(process.attributes or {})
    assert attributes["messaging.system"] == "jobsd"
    assert attributes["messaging.destination.name"] == job
    assert attributes["messaging.message.id"] == str(run_id)
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["jobsd.run.attempt"] == 1
    assert dict(send.attributes or {})["messaging.message.id"] == str(run_id)
    assert process.status.status_code is not StatusCode.ERROR


@pytest.mark.cluster
async def test_the_trace_follows_the_run_to_another_instance_and_through_retries(
    make_jobsd: MakeJobsD, spans: InMemorySpanExporter
) -> None:
    producer = make_jobsd(workers=0)
    worker = make_jobsd()
    job = job_name()
    producer.register_job(job, lambda: None, retries_error_limit=1)
    seen: list[Any] = []

    @worker.job(name=job, retries_error_limit=1)
    def flaky(info: RunInfo) -> str:  # a sync job: the span is current in its thread too
        seen.append(trace.get_current_span().get_span_context())
        if info.run_total_count == 1:
            raise ValueError("first attempt fails")
        return "second succeeds"

    async with producer, worker:
        with trace.get_tracer("test").start_as_current_span("POST /reports") as request:
            run_id = await producer.create_run(job).run()
        state = await producer.wait_for_run(run_id, timeout=10)
    assert state.result == "second succeeds"

    await eventually(lambda: len(named(spans, f"process {job}")) == 2, what="both process spans")
    first, second = sorted(named(spans, f"process {job}"), key=lambda s: s.start_time or 0)
    trace_id = request.get_span_context().trace_id
    assert first.context is not None and second.context is not None
    assert first.context.trace_id == second.context.trace_id == trace_id
    ran_on = [dict(s.attributes or {})["jobsd.instance.id"] for s in (first, second)]
    assert ran_on == [worker.instance_id] * 2
    assert first.status.status_code is StatusCode.ERROR
    assert dict(first.attributes or {})["error.type"] == "ValueError"
    assert any(e.name == "exception" for e in first.events)
    assert dict(second.attributes or {})["jobsd.run.attempt"] == 2
    assert dict(second.attributes or {})["jobsd.run.retry"] == "error"
    assert second.status.status_code is not StatusCode.ERROR
    assert seen == [first.context, second.context]


async def test_a_batch_is_one_send_span_linking_a_create_span_per_run(
    make_jobsd: MakeJobsD, spans: InMemorySpanExporter
) -> None:
    jd = make_jobsd()
    job = job_name()
    jd.register_job(job, lambda n: n)
    async with jd:
        with trace.get_tracer("test").start_as_current_span("import"):
            run_ids = await jd.create_runs(job, [Args(n) for n in range(3)])
        for run_id in run_ids:
            await jd.wait_for_run(run_id, timeout=10)
    await eventually(lambda: len(named(spans, f"process {job}")) == 3, what="three process spans")
    (send,) = named(spans, f"send {job}")
    creates = named(spans, f"create {job}")
    assert send.kind is SpanKind.CLIENT and dict(send.attributes or {})["messaging.batch.message_count"] == 3
    assert len(creates) == 3 and all(c.kind is SpanKind.PRODUCER for c in creates)
    assert {link.context.span_id for link in send.links} == {c.context.span_id for c in creates if c.context}
    parents = {p.parent.span_id for p in named(spans, f"process {job}") if p.parent is not None}
    assert parents == {c.context.span_id for c in creates if c.context}


def metric_points(reader: InMemoryMetricReader, name: str, job: str) -> list[Any]:
    data = reader.get_metrics_data()
    points = []
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    points += [
                        p
                        for p in metric.data.data_points
                        if (p.attributes or {}).get("messaging.destination.name") == job
                    ]
    return points


async def test_metrics_count_a_known_workload_exactly(
    make_jobsd: MakeJobsD, sdk: tuple[InMemorySpanExporter, InMemoryMetricReader]
) -> None:
    reader = sdk[1]
    jd = make_jobsd()
    job = job_name()

    @jd.job(name=job, retries_error_limit=0)
    async def work(fail: bool) -> None:
        if fail:
            raise KeyError("no such order")

    async with jd:
        run_ids = [await work.create_run(n >= 10).run() for n in range(12)]
        for run_id in run_ids:
            await jd.wait_for_run(run_id, timeout=10)

    def total(name: str, **attributes: Any) -> int:
        points = metric_points(reader, name, job)
        return sum(
            int(getattr(p, "value", getattr(p, "count", 0)))
            for p in points
            if all((p.attributes or {}).get(k) == v for k, v in attributes.items())
        )

    assert total("jobsd.runs.created") == 12
    assert total("jobsd.attempts.started") == 12
    assert total("jobsd.attempts.finished", **{"jobsd.outcome": "succeeded"}) == 10
    assert total("jobsd.attempts.finished", **{"jobsd.outcome": "failed"}) == 2
    assert total("messaging.process.duration") == 12
    assert total("messaging.process.duration", **{"error.type": "KeyError"}) == 2
    assert total("jobsd.attempt.start_delay") == 12


async def test_backlog_gauges_report_pending_runs(
    make_jobsd: MakeJobsD, sdk: tuple[InMemorySpanExporter, InMemoryMetricReader]
) -> None:
    reader = sdk[1]
    jd = make_jobsd()
    job = job_name()
    jd.register_job(job, lambda: None)
    async with jd:
        for _ in range(3):
            await jd.create_run(job).run_after(3600)

        def pending() -> int | None:  # each collection also asks for a fresh count
            points = metric_points(reader, "jobsd.runs.pending", job)
            return int(points[0].value) if points else None

        await eventually(lambda: pending() == 3, what="the pending gauge at 3")


async def test_failed_attempts_keep_their_traceback(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()

    def inner() -> None:
        raise ValueError("bad \x00 and \ud800 input")

    @jd.job(name="fails", retries_error_limit=0)
    async def fails() -> None:
        inner()

    async with jd:
        state = await jd.wait_for_run(await fails.create_run().run(), timeout=10)
        rows = await fetch_runs(jd)
    assert state.status is RunStatus.FAILED
    assert state.traceback is not None
    assert state.traceback.startswith("Traceback (most recent call last):")
    assert "in inner" in state.traceback
    assert state.traceback.rstrip().endswith("ValueError: bad \ufffd and \ufffd input")
    assert rows[0]["run_completed_traceback"] == state.traceback


def test_without_an_sdk_or_without_opentelemetry_nothing_breaks(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, sys

            if sys.argv[2] == "blocked":  # as if the otel extra were not installed
                class Block:
                    def find_spec(self, name, path=None, target=None):
                        if name == "opentelemetry" or name.startswith("opentelemetry."):
                            raise ImportError(name)
                sys.meta_path.insert(0, Block())

            from sqlalchemy import text
            from sqlalchemy.ext.asyncio import create_async_engine
            from jobsd_async import JobsD

            async def main(url):
                engine = create_async_engine(url)
                jd = JobsD(engine)
                jd.register_job("echo", lambda v: v)
                async with jd:
                    state = await jd.wait_for_run(await jd.create_run("echo", "ok").run(), timeout=10)
                    async with engine.connect() as conn:
                        stored = (await conn.execute(text("SELECT trace_context FROM jobsd_runs"))).scalar()
                await engine.dispose()
                print(state.result, stored, "opentelemetry" in sys.modules)

            asyncio.run(main(sys.argv[1]))
            """
        )
    )
    pythonpath = os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    for mode, loaded in (("api only", "True"), ("blocked", "False")):
        db = tmp_path / f"{mode.replace(' ', '_')}.db"
        proc = subprocess.run(
            [sys.executable, str(script), f"sqlite+aiosqlite:///{db}", mode.split()[0]],
            env={**os.environ, "PYTHONPATH": pythonpath},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["ok", "None", loaded], (mode, proc.stdout)


async def test_spans_the_job_makes_nest_under_its_attempt(
    make_jobsd: MakeJobsD, spans: InMemorySpanExporter
) -> None:
    # The job's own spans nest under its attempt's span.
    jd = make_jobsd()
    job = job_name()

    @jd.job(name=job)
    async def work() -> None:
        with trace.get_tracer("app").start_as_current_span("inside the job"):
            await asyncio.sleep(0)

    async with jd:
        await jd.wait_for_run(await work.create_run().run(), timeout=10)
    await eventually(lambda: len(named(spans, f"process {job}")) == 1, what="the process span")
    (inside,) = named(spans, "inside the job")
    (process,) = named(spans, f"process {job}")
    assert inside.parent is not None and process.context is not None
    assert inside.parent.span_id == process.context.span_id
