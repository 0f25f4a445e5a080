"""workflow-persistence: save the complete state of a paused or failed workflow run and
restore it later, in any process, so the run continues exactly where it stopped."""

from __future__ import annotations

from workflow_persistence._runtime.interrupts import interrupt
from workflow_persistence._runtime.retry import RetryPolicy
from workflow_persistence._runtime.workflow import RunResult, Workflow, WorkflowState
from workflow_persistence._serialization.codec import UnresolvedObject
from workflow_persistence._serialization.serializers import (
    JsonSerializer,
    PickleSerializer,
    Serializer,
)
from workflow_persistence._storage.database import DatabasePersistence
from workflow_persistence._storage.database_async import (
    AsyncDatabasePersistence,
    make_async_engine,
)
from workflow_persistence._storage.file import FilePersistence
from workflow_persistence._storage.memory import InMemoryPersistence
from workflow_persistence._storage.offloaded import AsyncFilePersistence, AsyncInMemoryPersistence
from workflow_persistence._storage.session import AsyncSessionPersistence, SessionPersistence

from ._events import Event, StartEvent, StopEvent
from ._snapshot import Decision, ErrorInfo, StoredSnapshotInfo, WorkflowSnapshot
from .abc import AsyncPersistence, Persistence
from .errors import (
    ConflictError,
    CorruptSnapshotError,
    InvalidAnswerError,
    InvalidArgumentError,
    InvalidWorkflowIdError,
    PayloadTooLargeError,
    PersistenceError,
    SerializationError,
    StorageUnavailableError,
    WorkflowDefinitionError,
    WorkflowError,
    WorkflowFailedError,
    WorkflowNotFoundError,
)
from .models import WorkflowInterrupt, WorkflowInterruptMixin, metadata
from .repository import AsyncWorkflowInterruptRepository, WorkflowInterruptRepository

__version__ = "0.1.0"

__all__ = [
    "AsyncDatabasePersistence",
    "AsyncFilePersistence",
    "AsyncInMemoryPersistence",
    "AsyncPersistence",
    "AsyncSessionPersistence",
    "AsyncWorkflowInterruptRepository",
    "ConflictError",
    "CorruptSnapshotError",
    "DatabasePersistence",
    "Decision",
    "ErrorInfo",
    "Event",
    "FilePersistence",
    "InMemoryPersistence",
    "InvalidAnswerError",
    "InvalidArgumentError",
    "InvalidWorkflowIdError",
    "JsonSerializer",
    "PayloadTooLargeError",
    "Persistence",
    "PersistenceError",
    "PickleSerializer",
    "RetryPolicy",
    "RunResult",
    "SerializationError",
    "Serializer",
    "SessionPersistence",
    "StartEvent",
    "StopEvent",
    "StorageUnavailableError",
    "StoredSnapshotInfo",
    "UnresolvedObject",
    "Workflow",
    "WorkflowDefinitionError",
    "WorkflowError",
    "WorkflowFailedError",
    "WorkflowInterrupt",
    "WorkflowInterruptMixin",
    "WorkflowInterruptRepository",
    "WorkflowNotFoundError",
    "WorkflowSnapshot",
    "WorkflowState",
    "interrupt",
    "make_async_engine",
    "metadata",
]
