"""OpenTelemetry traces and metrics, when the ``opentelemetry-api`` package is installed.

The library speaks only the API: its spans and measurements go to whatever SDK the app
configured (``trace.set_tracer_provider``, ``metrics.set_meter_provider``). Until one is
configured each call costs one look at two globals; without the API installed, nothing
here runs at all.

Spans (all ``workflow_persistence.*``): ``start`` and ``resume`` (one per call, the async
twins included), ``node`` (one per node attempt, under the run's span), and one per
storage call (``save``, ``load``, ``list``, ``prune``, ``delete``, ``exists``) under
whatever span is current. When a run pauses, the context of its span is stored with the
question (``Decision.trace_context``, W3C ``traceparent``); the span of the resume that
answers it links to that context, so a run that waited a week reads as one story.

Metrics: ``workflow_persistence.operation.duration`` (s) and
``workflow_persistence.payload.size`` (bytes) histograms for every storage call, and
:func:`observe_waiting_runs`, a gauge of the runs waiting for an answer, by workflow.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar

from workflow_persistence._snapshot import exception_type_name, utc_now
from workflow_persistence.errors import WorkflowFailedError

if TYPE_CHECKING:
    from workflow_persistence._snapshot import Decision, WorkflowSnapshot
    from workflow_persistence.abc import Persistence

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, trace
    from opentelemetry.environment_variables import (
        OTEL_PYTHON_METER_PROVIDER,
        OTEL_PYTHON_TRACER_PROVIDER,
    )
    from opentelemetry.metrics import _internal as metrics_globals
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the optional extra is not installed: every call below is a no-op
    API_INSTALLED = False
else:
    API_INSTALLED = True

__all__ = [
    "API_INSTALLED",
    "node_call",
    "observe_waiting_runs",
    "resumed",
    "run_call",
    "storage_call",
    "trace_context",
]

R = TypeVar("R")

SCOPE: Final = "workflow_persistence"
# Attribute names: OpenTelemetry's semantic conventions where one fits, ours otherwise.
WORKFLOW_NAME: Final = "workflow_persistence.workflow.name"
WORKFLOW_ID: Final = "workflow_persistence.workflow.id"
NODE: Final = "workflow_persistence.node"
ATTEMPT: Final = "workflow_persistence.node.attempt"
STATUS: Final = "workflow_persistence.status"
VERSION: Final = "workflow_persistence.version"
BYTES: Final = "workflow_persistence.bytes"
COUNT: Final = "workflow_persistence.count"
BACKEND: Final = "workflow_persistence.backend"
OPERATION: Final = "workflow_persistence.operation"
WAITED: Final = "workflow_persistence.waited"
DB_SYSTEM: Final = "db.system.name"
DB_COLLECTION: Final = "db.collection.name"
ERROR_TYPE: Final = "error.type"

#: Histogram buckets: storage calls take from microseconds (memory) to seconds.
_DURATION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
)
_SIZE_BUCKETS = tuple(float(4**k * 256) for k in range(10))  # 256 B .. 64 MiB


class _Instruments:
    """The tracer and the instruments of one pair of providers (None where a provider
    records nothing)."""

    def __init__(self, tracer_provider: Any, meter_provider: Any) -> None:
        from workflow_persistence import __version__

        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.tracer: trace.Tracer | None = None
        if tracer_provider is not None and not isinstance(
            tracer_provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider
        ):
            self.tracer = tracer_provider.get_tracer(SCOPE, __version__)
        self.duration: metrics.Histogram | None = None
        self.size: metrics.Histogram | None = None
        if meter_provider is not None and not isinstance(meter_provider, metrics.NoOpMeterProvider):
            meter = meter_provider.get_meter(SCOPE, __version__)
            self.duration = meter.create_histogram(
                "workflow_persistence.operation.duration",
                unit="s",
                description="How long a storage call (save, load, list, ...) took",
                explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
            )
            self.size = meter.create_histogram(
                "workflow_persistence.payload.size",
                unit="By",
                description="Size of the encoded snapshot a save wrote or a load read",
                explicit_bucket_boundaries_advisory=_SIZE_BUCKETS,
            )
        self.on = self.tracer is not None or self.duration is not None


_cache: _Instruments | None = None
_cache_lock = threading.Lock()
#: A provider named by environment variable is loaded by the API's public getters only.
_PROVIDERS_FROM_ENV = API_INSTALLED and (
    OTEL_PYTHON_TRACER_PROVIDER in os.environ or OTEL_PYTHON_METER_PROVIDER in os.environ
)


def _instruments() -> _Instruments | None:
    """The instruments to use now, or None while no provider records anything.

    This runs on every call of the library, so the common case (API installed, nothing
    configured) is two reads of the API's globals: its public getters would cost more
    than the 2% of a memory save this module may add.
    """
    if not API_INSTALLED:
        return None
    if _PROVIDERS_FROM_ENV:
        tracer_provider: Any = trace.get_tracer_provider()
        meter_provider: Any = metrics.get_meter_provider()
    else:
        tracer_provider = trace._TRACER_PROVIDER
        meter_provider = metrics_globals._METER_PROVIDER
        if tracer_provider is None and meter_provider is None:
            return None
    global _cache
    cached = _cache
    if (
        cached is None
        or cached.tracer_provider is not tracer_provider
        or cached.meter_provider is not meter_provider
    ):
        with _cache_lock:
            cached = _cache
            if (
                cached is None
                or cached.tracer_provider is not tracer_provider
                or cached.meter_provider is not meter_provider
            ):
                cached = _cache = _Instruments(tracer_provider, meter_provider)
    return cached if cached.on else None


# -- spans ----------------------------------------------------------------------------------


class _Off:
    """What a call gets while nothing records: every method does nothing."""

    __slots__ = ()

    def __enter__(self) -> _Off:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def stored(self, snapshot: WorkflowSnapshot, size: int) -> None:
        pass

    def counted(self, count: int) -> None:
        pass

    def finished(self, result: R) -> R:
        return result


OFF: Final = _Off()


class _Span:
    """One span (when tracing) made current while its ``with`` block runs."""

    __slots__ = ("attributes", "instruments", "kind", "name", "span", "token")

    def __init__(
        self, instruments: _Instruments, name: str, attributes: dict[str, Any], kind: Any = None
    ) -> None:
        self.instruments = instruments
        self.name = name
        self.attributes = attributes
        self.kind = kind
        self.span: trace.Span | None = None

    def __enter__(self) -> Any:
        tracer = self.instruments.tracer
        if tracer is not None:
            self.span = tracer.start_span(
                self.name,
                kind=self.kind or trace.SpanKind.INTERNAL,
                attributes=self.attributes,
            )
            self.token = otel_context.attach(trace.set_span_in_context(self.span))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._ending(exc)
        span = self.span
        if span is None:
            return
        self.span = None
        try:
            if exc is not None:
                self._failed(span, exc)
        finally:
            otel_context.detach(self.token)
            span.end()

    def _ending(self, exc: BaseException | None) -> None:
        """What a kind of call records as it ends, before its span ends."""

    def _failed(self, span: trace.Span, exc: BaseException) -> None:
        record_error(span, exc)

    def set(self, key: str, value: Any) -> None:
        if self.span is not None and value is not None:
            self.span.set_attribute(key, value)


def record_error(span: trace.Span, exc: BaseException) -> None:
    """Mark ``span`` as failed by ``exc``, as the semantic conventions say."""
    span.record_exception(exc)
    span.set_attribute(ERROR_TYPE, exception_type_name(exc))
    span.set_status(trace.Status(trace.StatusCode.ERROR, _description(exc)))


def _description(exc: BaseException) -> str:
    try:
        return f"{type(exc).__name__}: {exc}"[:1000]
    except Exception:  # a __str__ that raises must not stop the span from ending
        return type(exc).__name__


class _StorageCall(_Span):
    """A storage call: its span, and its duration and payload size as metrics."""

    __slots__ = ("metric_attributes", "size", "started")

    def __init__(
        self,
        instruments: _Instruments,
        operation: str,
        persistence: object,
        workflow_id: str | None,
    ) -> None:
        backend = _backend_attributes(persistence)
        attributes = dict(backend)
        if workflow_id is not None:
            attributes[WORKFLOW_ID] = workflow_id
        kind = trace.SpanKind.CLIENT if DB_SYSTEM in backend else trace.SpanKind.INTERNAL
        super().__init__(instruments, f"{SCOPE}.{operation}", attributes, kind)
        backend[OPERATION] = operation
        self.metric_attributes = backend
        self.size: int | None = None

    def __enter__(self) -> _StorageCall:
        super().__enter__()
        self.started = time.perf_counter()
        return self

    def _ending(self, exc: BaseException | None) -> None:
        elapsed = time.perf_counter() - self.started
        instruments = self.instruments
        attributes = self.metric_attributes
        if exc is not None:
            attributes = {**attributes, ERROR_TYPE: exception_type_name(exc)}
        if instruments.duration is not None:
            instruments.duration.record(elapsed, attributes)
        if instruments.size is not None and self.size is not None:
            instruments.size.record(self.size, attributes)

    def stored(self, snapshot: WorkflowSnapshot, size: int) -> None:
        """The snapshot a save wrote or a load read, and its encoded size."""
        self.size = size
        if self.span is not None:
            self.span.set_attributes(_snapshot_attributes(snapshot, size))

    def counted(self, count: int) -> None:
        """How many records a list returned, or a prune or delete removed."""
        self.set(COUNT, count)


def _snapshot_attributes(snapshot: WorkflowSnapshot, size: int) -> dict[str, Any]:
    attributes: dict[str, Any] = {BYTES: size, VERSION: snapshot.version}
    for key, value in (
        (STATUS, snapshot.status),
        (NODE, snapshot.current_node),
        (WORKFLOW_NAME, snapshot.workflow_name),
    ):
        if type(value) is str:
            attributes[key] = value
    return attributes


def _backend_attributes(persistence: object) -> dict[str, Any]:
    describe = getattr(persistence, "_telemetry_attributes", None)
    if describe is None:
        return {BACKEND: type(persistence).__name__}
    return dict(describe())


def database_attributes(dialect: Any, table: Any) -> dict[str, str]:
    """What a SQL backend's spans say of it: ``backend`` is SQLAlchemy's dialect name
    (MariaDB is ``mysql``), ``db.system.name`` the semantic conventions' (``mariadb``)."""
    name: str = dialect.name
    system = "mariadb" if name == "mysql" and getattr(dialect, "is_mariadb", False) else name
    return {BACKEND: name, DB_SYSTEM: system, DB_COLLECTION: table.name}


def storage_call(
    persistence: object, operation: str, workflow_id: str | None = None
) -> _StorageCall | _Off:
    """Trace and measure one storage call: ``with storage_call(...) as call:``."""
    instruments = _instruments()
    if instruments is None:
        return OFF
    return _StorageCall(instruments, operation, persistence, workflow_id)


class _NodeCall(_Span):
    __slots__ = ("pause",)

    def __init__(
        self, instruments: _Instruments, attributes: dict[str, Any], pause: type[BaseException]
    ) -> None:
        super().__init__(instruments, f"{SCOPE}.node", attributes)
        self.pause = pause

    def _failed(self, span: trace.Span, exc: BaseException) -> None:
        if isinstance(exc, self.pause):  # the node asked a question: no error
            span.set_attribute(STATUS, "interrupted")
        else:
            record_error(span, exc)

    def _ending(self, exc: BaseException | None) -> None:
        if exc is None:
            self.set(STATUS, "completed")


def node_call(
    node: str,
    workflow_id: str,
    workflow_name: str | None,
    attempt: int,
    pause: type[BaseException],
) -> _NodeCall | _Off:
    """Trace one attempt of a node; ``pause`` is the exception that pauses the run."""
    instruments = _instruments()
    if instruments is None or instruments.tracer is None:
        return OFF
    attributes: dict[str, Any] = {NODE: node, WORKFLOW_ID: workflow_id, ATTEMPT: attempt}
    if workflow_name is not None:
        attributes[WORKFLOW_NAME] = workflow_name
    return _NodeCall(instruments, attributes, pause)


class _RunCall(_Span):
    __slots__ = ()

    def finished(self, result: R) -> R:
        """The RunResult the call returns: its status and version go on the span."""
        self.set(STATUS, getattr(result, "status", None))
        self.set(VERSION, getattr(result, "version", None))
        return result

    def _failed(self, span: trace.Span, exc: BaseException) -> None:
        if isinstance(exc, WorkflowFailedError):
            span.set_attribute(STATUS, "failed")
            if exc.node is not None:
                span.set_attribute(NODE, exc.node)
        record_error(span, exc)


def run_call(call: str, workflow_name: str | None, workflow_id: str) -> _RunCall | _Off:
    """Trace one ``start`` or ``resume`` (``call``); return its result through
    ``finished`` so the span records how the run stands."""
    instruments = _instruments()
    if instruments is None or instruments.tracer is None:
        return OFF
    attributes: dict[str, Any] = {WORKFLOW_ID: workflow_id}
    if workflow_name is not None:
        attributes[WORKFLOW_NAME] = workflow_name
    return _RunCall(instruments, f"{SCOPE}.{call}", attributes)


# -- the story across a pause ---------------------------------------------------------------


def trace_context() -> dict[str, str] | None:
    """The current span's context as W3C trace-context headers, to store with a question;
    None when nothing is traced."""
    if _instruments() is None:
        return None
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier or None


def resumed(snapshot: WorkflowSnapshot) -> None:
    """Describe the run a resume loaded on the resume's span, and link that span to the
    span of the run that asked the pending question."""
    instruments = _instruments()
    if instruments is None or instruments.tracer is None:
        return
    span = trace.get_current_span()
    if not span.is_recording():
        return
    attributes = {
        key: value
        for key, value in _snapshot_attributes(snapshot, 0).items()
        if key not in (BYTES, STATUS)
    }
    span.set_attributes(attributes)
    pending = _pending(snapshot)
    if pending is None:
        return
    asked = _linked_context(pending.trace_context)
    if asked is not None:
        span.add_link(asked, {NODE: pending.node, "workflow_persistence.link": "asked"})
    if isinstance(pending.asked_at, datetime):
        waited = (utc_now() - pending.asked_at).total_seconds()
        span.set_attribute(WAITED, max(waited, 0.0))


def _pending(snapshot: WorkflowSnapshot) -> Decision | None:
    history = snapshot.history
    if snapshot.status != "interrupted" or not history:
        return None
    return history[-1]


def _linked_context(carrier: object) -> trace.SpanContext | None:
    """The span context stored headers name, or None (absent, damaged, or another format)."""
    if not isinstance(carrier, Mapping) or not all(
        type(k) is str and type(v) is str for k, v in carrier.items()
    ):
        return None
    context = TraceContextTextMapPropagator().extract(carrier)
    span_context = trace.get_current_span(context).get_span_context()
    return span_context if span_context.is_valid else None


# -- metrics of what is stored --------------------------------------------------------------


def waiting_runs(persistence: Persistence) -> dict[str | None, int]:
    """How many runs wait for an answer, by workflow name (None: runs of unnamed workflows)."""
    counts = Counter(info.workflow_name for info in persistence.list(status="interrupted"))
    return dict(counts)


def observe_waiting_runs(persistence: Persistence, *, meter_provider: Any = None) -> Any:
    """Report the runs waiting for an answer in ``persistence`` as an observable gauge,
    ``workflow_persistence.runs.waiting``, by ``workflow_persistence.workflow.name``.

    The store is listed each time the app's metric reader collects (without decoding any
    snapshot). ``meter_provider`` defaults to the global one. Returns the instrument;
    needs the ``otel`` extra (``opentelemetry-api``).
    """
    if not API_INSTALLED:
        raise ImportError(
            "observe_waiting_runs needs the OpenTelemetry API: pip install"
            " 'workflow-persistence[otel]'"
        )
    from workflow_persistence import __version__

    provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
    meter = provider.get_meter(SCOPE, __version__)

    def observe(options: metrics.CallbackOptions) -> Iterator[metrics.Observation]:
        for name, count in waiting_runs(persistence).items():
            yield metrics.Observation(count, {} if name is None else {WORKFLOW_NAME: name})

    return meter.create_observable_gauge(
        "workflow_persistence.runs.waiting",
        callbacks=[observe],
        unit="{run}",
        description="Runs waiting for an answer to an interrupt, by workflow",
    )
