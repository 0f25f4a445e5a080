"""What OpenTelemetry costs a 1 KiB save and load: without the API, with the API and no
SDK (the library's promise: at most 2%), and with an SDK recording every span.

"Without the API" must mean not importable, so each mode runs in its own process (the
API blocked by an import hook in the first); processes of the three modes alternate,
round after round, so noise on the machine falls on all three. Each child times
``save`` and ``load`` of a 1 KiB snapshot, one call at a time, after a warm-up.

    python bench/tracing.py            # every backend
    python bench/tracing.py memory postgresql
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Nothing that imports the library at the top: a child must block the API before that.
QUICK = os.environ.get("WFP_BENCH_QUICK") == "1"
MODES = ("no API", "API, no SDK", "SDK recording")
KINDS = ("memory", "sqlite", "postgresql", "mariadb")
ROUNDS = 4 if QUICK else 12
PER_ROUND = 100 if QUICK else 500
WARMUP = 20 if QUICK else 200


def run(kinds: tuple[str, ...] = KINDS) -> str:
    from _harness import bench_database, format_table

    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as directory:
        for kind in kinds:
            if kind == "memory":
                rows.extend(_rows(kind, None))
                continue
            with bench_database(kind, Path(directory)) as db:
                rows.extend(_rows(kind, db.url.render_as_string(hide_password=False)))
    table = format_table(
        ["backend", "operation", "mode", "ops/s", "p50 µs", "p50 vs no API"], rows
    )
    return (
        f"{table}\n\n{_hook_cost()}\n\n1 KiB snapshots; {ROUNDS} rounds x {PER_ROUND}"
        " calls per mode, in"
        " alternating processes. \"API, no SDK\": opentelemetry-api importable, no provider"
        " set. \"SDK recording\": the SDK's TracerProvider with a batch processor to an"
        " exporter that drops, and a MeterProvider with an in-memory reader."
    )


def _hook_cost() -> str:
    """What the hooks of one storage call cost with no SDK, in this process (steadier
    than the figures across processes): the API's path against the no-API path."""
    import timeit

    from workflow_persistence import InMemoryPersistence, WorkflowSnapshot, _telemetry

    persistence, snap = InMemoryPersistence(), WorkflowSnapshot("w")

    def hooks() -> None:
        with _telemetry.storage_call(persistence, "save", "w") as call:
            call.stored(snap, 1024)

    installed = _telemetry.API_INSTALLED
    costs: dict[bool, float] = {}
    try:
        for flag in (True, False, True, False):
            _telemetry.API_INSTALLED = flag
            best = min(timeit.repeat(hooks, number=100_000, repeat=5)) / 100_000 * 1e9
            costs[flag] = min(costs.get(flag, best), best)
    finally:
        _telemetry.API_INSTALLED = installed
    return (
        f"The hooks of one storage call, in one process: {costs[True]:.0f} ns with the API"
        f" and no SDK, {costs[False]:.0f} ns on the no-API path."
    )


def _rows(kind: str, url: str | None) -> list[list[object]]:
    from _harness import Stats

    samples: dict[str, dict[str, list[float]]] = {m: {"save": [], "load": []} for m in MODES}
    for round_number in range(ROUNDS):
        order = MODES if round_number % 2 == 0 else MODES[::-1]
        for mode in order:
            for operation, values in _child(mode, kind, url).items():
                samples[mode][operation].extend(values)
    rows: list[list[object]] = []
    for operation in ("save", "load"):
        base = Stats(samples["no API"][operation])
        for mode in MODES:
            stats = Stats(samples[mode][operation])
            change = (stats.p50_us / base.p50_us - 1) * 100
            rows.append([
                kind, operation, mode, f"{stats.ops:,.0f}", f"{stats.p50_us:.1f}",
                "-" if mode == "no API" else f"{change:+.1f}%",
            ])
    return rows


def _child(mode: str, kind: str, url: str | None) -> dict[str, list[float]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run(  # noqa: S603 - this Python, our own child code
        [sys.executable, __file__, "--child", mode, kind, url or ""],
        capture_output=True, text=True, env=env, check=False, timeout=600,
        cwd=Path(__file__).parent,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{mode} on {kind} failed:\n{done.stderr}")
    result: dict[str, list[float]] = json.loads(done.stdout)
    return result


# -- in the child --------------------------------------------------------------------------


def _block_the_api() -> None:
    import importlib.abc

    class NoOpenTelemetry(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any, target: Any = None) -> None:
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, NoOpenTelemetry())


def _install_sdk() -> None:
    from collections.abc import Sequence

    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Dropping(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropping()))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))


def _child_main(mode: str, kind: str, url: str) -> None:
    if mode == "no API":
        _block_the_api()
    elif mode == "SDK recording":
        _install_sdk()
    import gc

    from _harness import sized_state, snapshot

    from workflow_persistence import (
        DatabasePersistence,
        InMemoryPersistence,
        Persistence,
        _telemetry,
    )

    assert _telemetry.API_INSTALLED is (mode != "no API")
    persistence: Persistence = (
        InMemoryPersistence() if kind == "memory" else DatabasePersistence(url)
    )
    snap = snapshot(f"tracing-{os.getpid()}", sized_state(1024))
    workflow_id = snap.workflow_id
    clock = time.perf_counter
    out: dict[str, list[float]] = {"save": [], "load": []}
    for _ in range(WARMUP):
        persistence.save(snap)
        persistence.load(workflow_id)
    gc.collect()
    gc.disable()
    for _ in range(PER_ROUND):
        started = clock()
        persistence.save(snap)
        saved = clock()
        persistence.load(workflow_id)
        out["save"].append(saved - started)
        out["load"].append(clock() - saved)
    gc.enable()
    persistence.delete(workflow_id)
    print(json.dumps(out))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child_main(*sys.argv[2:5])
    else:
        wanted = tuple(sys.argv[1:]) or KINDS
        print(run(wanted))
