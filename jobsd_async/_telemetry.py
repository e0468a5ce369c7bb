"""OpenTelemetry: traces that follow a request into its jobs, and metrics (SPEC §6.4).

With the ``otel`` extra (``opentelemetry-api``) and an SDK configured by the application,
jobsd emits, following the messaging semantic conventions (``messaging.system`` = ``jobsd``,
destination = the job, message id = the run id):

- a ``send {job}`` span (PRODUCER) around creating a run, whose context is stored in the
  row (W3C ``traceparent``/``tracestate``) and kept by its retries and follow-ups; a batch
  (``create_runs``) is one ``send`` span (CLIENT) linking a ``create {job}`` span (PRODUCER)
  per run;
- a ``process {job}`` span (CONSUMER) around each attempt, on whichever instance runs it,
  parented on that stored context and current inside the job;
- counters, histograms and gauges (see :data:`METRICS`).

Without an SDK (or without the package) nothing is recorded and, because the providers
are checked first, almost nothing is spent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # the otel extra is not installed
    trace = None  # type: ignore[assignment]

from ._store._browse import JobBacklog
from ._store._rows import RunRow

_SCOPE = "jobsd_async"  # the instrumentation scope of the tracer and the meter

SYSTEM = "jobsd"
METRICS = {
    "jobsd.runs.created": "counter {run}: runs created (by job)",
    "jobsd.attempts.started": "counter {attempt}: attempts started (by job)",
    "jobsd.attempts.finished": "counter {attempt}: attempts finished (by job and jobsd.outcome)",
    "messaging.process.duration": "histogram s: how long attempts ran (by job, error.type)",
    "jobsd.attempt.start_delay": "histogram s: from due to started (by job)",
    "jobsd.runs.pending": "gauge {run}: pending runs (by job, jobsd.table_prefix)",
    "jobsd.runs.running": "gauge {run}: running runs (by job, jobsd.table_prefix)",
    "jobsd.runs.oldest_due_age": "gauge s: age of the oldest due pending run (by job, jobsd.table_prefix)",
}


class _Configured:
    """Whether SDK providers are configured, asked again at most once a second (the
    providers are set once, at start-up; asking costs more than the rest of a no-op)."""

    __slots__ = ("_asked_at", "measuring", "tracing")

    def __init__(self) -> None:
        self._asked_at = -1.0
        self.tracing = self.measuring = False

    def refresh(self, *, now_please: bool = False) -> _Configured:
        now = time.monotonic()
        if now_please or now - self._asked_at >= 1.0:
            self._asked_at = now
            self.tracing = trace is not None and not isinstance(
                trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider
            )
            self.measuring = trace is not None and not type(
                otel_metrics.get_meter_provider()
            ).__module__.startswith("opentelemetry.metrics")
        return self


_configured = _Configured()


def notice_providers() -> None:
    """Look at the configured providers now (they are otherwise noticed within a second)."""
    _configured.refresh(now_please=True)


def tracing() -> bool:
    """Whether an SDK tracer provider is configured (else spans would record nothing)."""
    return _configured.refresh().tracing


def measuring() -> bool:
    """Whether an SDK meter provider is configured."""
    return _configured.refresh().measuring


def recording() -> bool:
    """Whether anything is recorded at all (else every hook can be skipped)."""
    configured = _configured.refresh()
    return configured.tracing or configured.measuring


def _destination(job: str, operation: str | None = None) -> dict[str, Any]:
    attributes: dict[str, Any] = {"messaging.system": SYSTEM, "messaging.destination.name": job}
    if operation is not None:
        attributes["messaging.operation.type"] = attributes["messaging.operation.name"] = operation
    return attributes


class _Instruments:
    """The process's instruments, made once (meters from a later-set provider still apply)."""

    def __init__(self) -> None:
        meter = otel_metrics.get_meter(_SCOPE)
        self.created = meter.create_counter("jobsd.runs.created", "{run}", "Runs created")
        self.started = meter.create_counter("jobsd.attempts.started", "{attempt}", "Attempts started")
        self.finished = meter.create_counter("jobsd.attempts.finished", "{attempt}", "Attempts finished")
        self.duration = meter.create_histogram("messaging.process.duration", "s", "How long attempts ran")
        self.delay = meter.create_histogram("jobsd.attempt.start_delay", "s", "From due to started")
        self.backlogs: dict[Any, Backlog] = {}
        for name, field, unit, doc in (
            ("jobsd.runs.pending", "pending", "{run}", "Pending runs"),
            ("jobsd.runs.running", "running", "{run}", "Running runs"),
            ("jobsd.runs.oldest_due_age", "oldest_due_age", "s", "Age of the oldest due pending run"),
        ):
            meter.create_observable_gauge(name, [self._observer(field)], unit, doc)

    def _observer(self, field: str) -> Callable[[Any], Iterable[Any]]:
        def observe(_options: Any) -> Iterable[Any]:
            for backlog in list(self.backlogs.values()):
                yield from backlog.observe(field)

        return observe


_instruments: _Instruments | None = None


def _get_instruments() -> _Instruments:
    global _instruments
    if _instruments is None:
        _instruments = _Instruments()
    return _instruments


class Backlog:
    """Cluster-wide counts by job for the gauges, refreshed on the instance's event loop
    when a metric reader collects (so nothing is queried unless someone reads metrics)."""

    def __init__(self, prefix: str, loop: asyncio.AbstractEventLoop, refresh: Callable[[], Any]) -> None:
        self.prefix = prefix
        self._loop = loop
        self._refresh = refresh
        self.by_job: dict[str, JobBacklog] = {}

    def observe(self, field: str) -> Iterator[Any]:
        # Called by the reader (maybe on its own thread): report what is known, ask for more.
        with contextlib.suppress(RuntimeError):  # (a closed loop)
            self._loop.call_soon_threadsafe(self._refresh)
        for job, counts in list(self.by_job.items()):
            attributes = {**_destination(job), "jobsd.table_prefix": self.prefix}
            yield otel_metrics.Observation(getattr(counts, field), attributes)


class Telemetry:
    """What one instance records; every method is cheap when nothing is configured."""

    def __init__(self) -> None:
        self.available = trace is not None
        self._tracer = trace.get_tracer(_SCOPE) if self.available else None

    # ---------------------------------------------------------------- producing

    @contextmanager
    def sending(self, job: str, count: int = 1) -> Iterator[Sending]:
        """Around creating ``count`` runs of ``job``: their trace context comes from here."""
        if not tracing():
            yield Sending(None, job, count)
            return
        assert self._tracer is not None
        kind = SpanKind.PRODUCER if count == 1 else SpanKind.CLIENT
        attributes = _destination(job, "send")
        if count != 1:
            attributes["messaging.batch.message_count"] = count
        with self._tracer.start_as_current_span(f"send {job}", kind=kind, attributes=attributes) as span:
            yield Sending(span, job, count, self._tracer)

    def created(self, job: str, count: int) -> None:
        if measuring():
            _get_instruments().created.add(count, _destination(job))

    # ---------------------------------------------------------------- processing

    @contextmanager
    def processing(self, row: RunRow) -> Iterator[Any]:
        """The attempt's ``process {job}`` span, current while the job runs (None when off)."""
        if measuring():
            instruments = _get_instruments()
            instruments.started.add(1, _destination(row.job))
            if row.run_started_at is not None:
                delay = (row.run_started_at - row.run_at).total_seconds()
                instruments.delay.record(max(0.0, delay), _destination(row.job))
        if not tracing():
            yield None
            return
        assert self._tracer is not None
        parent = _extract(row.trace_context)
        attributes = {
            **_destination(row.job, "process"),
            "messaging.message.id": str(row.run_id),
            "jobsd.row.id": row.id,
            "jobsd.run.attempt": row.run_total_count,
            "jobsd.instance.id": row.run_started_by or 0,
        }
        if row.retries_on_error_count or row.retries_on_timeout_count:
            attributes["jobsd.run.retry"] = "error" if row.retries_on_error_count else "timeout"
            attributes["jobsd.run.retries_on_error"] = row.retries_on_error_count
            attributes["jobsd.run.retries_on_timeout"] = row.retries_on_timeout_count
        if row.schedule is not None:
            attributes["jobsd.run.schedule"] = row.schedule
        span = self._tracer.start_span(
            f"process {row.job}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield span
        finally:
            otel_context.detach(token)
            span.end()

    def finished(
        self,
        span: Any,
        job: str,
        outcome: str,
        error: BaseException | None,
        error_type: str | None,
        seconds: float,
    ) -> None:
        """An attempt ended: its span's status, the counters and the duration."""
        if span is not None:
            if error_type is not None:
                span.set_attribute("error.type", error_type)
                if error is not None:
                    span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, outcome))
            span.set_attribute("jobsd.outcome", outcome)
        if measuring():
            instruments = _get_instruments()
            attributes = _destination(job)
            instruments.finished.add(1, {**attributes, "jobsd.outcome": outcome})
            if error_type is not None:
                attributes = {**attributes, "error.type": error_type}
            instruments.duration.record(seconds, {**attributes, "messaging.operation.name": "process"})

    # ---------------------------------------------------------------- gauges

    def watch_backlog(self, key: Any, backlog: Backlog | None) -> None:
        """Report ``backlog`` for the gauges under ``key`` (None: stop reporting it)."""
        if trace is None:
            return
        backlogs = _get_instruments().backlogs
        if backlog is None:
            backlogs.pop(key, None)
        else:
            backlogs.setdefault(key, backlog)


class Sending:
    """The context creating runs stores in their rows."""

    __slots__ = ("_count", "_job", "_span", "_tracer")

    def __init__(self, span: Any, job: str, count: int, tracer: Any = None) -> None:
        self._span = span
        self._job = job
        self._count = count
        self._tracer = tracer

    def carrier(self) -> str | None:
        """The trace context to store in a run's row (None when there is no trace)."""
        if self._span is None:
            return None
        if self._count == 1:
            return _inject(None)
        # A batch: a ``create`` span per run, linked from the ``send`` span.
        attributes = _destination(self._job, "create")
        create = self._tracer.start_span(f"create {self._job}", kind=SpanKind.PRODUCER, attributes=attributes)
        try:
            self._span.add_link(create.get_span_context())
            return _inject(trace.set_span_in_context(create))
        finally:
            create.end()

    def sent(self, run_ids: Iterable[int]) -> None:
        """The runs are in the table: their ids."""
        if self._span is not None and self._count == 1:
            for run_id in run_ids:
                self._span.set_attribute("messaging.message.id", str(run_id))


def _inject(context: Any) -> str | None:
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return json.dumps(carrier, separators=(",", ":")) if carrier else None


def _extract(text: str | None) -> Any:
    if not text:
        return None
    try:
        carrier = json.loads(text)
    except ValueError:
        return None
    return propagate.extract(carrier) if isinstance(carrier, dict) else None


__all__ = ("METRICS", "Backlog", "JobBacklog", "Telemetry", "tracing")
