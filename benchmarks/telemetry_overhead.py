"""What OpenTelemetry costs: PostgreSQL burn-down without the package, with the API only,
and with an SDK recording every span and metric (exported nowhere).

    python benchmarks/telemetry_overhead.py [postgresql|mariadb|sqlite] [--runs N] [--rounds K]

Each measurement runs in a process of its own (OpenTelemetry's providers are per process),
the three modes interleaved round after round; prints each mode's median and range.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MODES = ("none", "api", "sdk")

CHILD = """
import asyncio, json, sys
mode, backend, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "none":  # as if the otel extra were not installed
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ImportError(name)
    sys.meta_path.insert(0, Block())
elif mode == "sdk":
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        MetricExporter, MetricExportResult, PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Spans(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    class Metrics(MetricExporter):
        def __init__(self):
            super().__init__()
        def export(self, metrics_data, timeout_millis=10_000, **kwargs):
            return MetricExportResult.SUCCESS
        def force_flush(self, timeout_millis=10_000):
            return True
        def shutdown(self, timeout_millis=30_000, **kwargs):
            pass

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Spans()))
    trace.set_tracer_provider(provider)
    reader = PeriodicExportingMetricReader(Metrics(), export_interval_millis=1000)
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

import throughput
url = throughput.URLS.get(backend) or "sqlite+aiosqlite:///" + sys.argv[4]
rate = asyncio.run(throughput.fresh(url, lambda e, p: throughput.burn_down(e, p, runs)))
print(json.dumps({"rate": rate, "otel": "opentelemetry" in sys.modules}))
"""


def measure(mode: str, backend: str, runs: int, scratch: Path) -> dict[str, Any]:
    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), str(here.parent)])}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode, backend, str(runs), str(scratch / f"{mode}.db")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("backend", nargs="?", default="postgresql")
    parser.add_argument("--runs", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    scratch = Path(os.environ.get("TMPDIR", "/tmp"))
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            result = measure(mode, args.backend, args.runs, scratch)
            assert result["otel"] == (mode != "none"), result
            rates[mode].append(result["rate"])
            print(f"  {mode:5s} {result['rate']:8.0f} runs/s", flush=True)
    base = statistics.median(rates["none"])
    for mode in MODES:
        median = statistics.median(rates[mode])
        print(
            f"{args.backend} burn-down, {mode:5s}: median {median:8.0f} runs/s "
            f"(range {min(rates[mode]):.0f}-{max(rates[mode]):.0f}), "
            f"{median / base:.3f}x without opentelemetry"
        )


if __name__ == "__main__":
    main()
