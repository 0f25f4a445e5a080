"""The library's own exception types.

Every error a caller can meet is one of these, with a message that says what to do;
the driver's or decoder's exception, when there is one, is kept as ``__cause__``.
"""

from __future__ import annotations

from datetime import datetime

__all__ = [
    "ConflictError",
    "CorruptSnapshotError",
    "InvalidAnswerError",
    "InvalidArgumentError",
    "InvalidWorkflowIdError",
    "PayloadTooLargeError",
    "PersistenceError",
    "SerializationError",
    "StorageUnavailableError",
    "WorkflowDefinitionError",
    "WorkflowError",
    "WorkflowFailedError",
    "WorkflowNotFoundError",
]


class PersistenceError(Exception):
    """Base of every error raised by a persistence backend or serializer."""


class WorkflowNotFoundError(PersistenceError, KeyError):
    """No snapshot is stored under the workflow id."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(workflow_id)
        self.workflow_id = workflow_id

    def __str__(self) -> str:
        # KeyError's __str__ would print the repr of the args tuple.
        return f"no workflow snapshot is stored under id {self.workflow_id!r}"


class InvalidWorkflowIdError(PersistenceError, ValueError):
    """The workflow id is not a non-empty str of at most 255 characters."""


class SerializationError(PersistenceError):
    """A value in the snapshot cannot be encoded; ``path`` names where it is."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class CorruptSnapshotError(PersistenceError):
    """Stored bytes cannot be decoded: damaged, tampered, or written by another format."""


class ConflictError(PersistenceError):
    """A compare-and-set on the snapshot's version failed; nothing was changed.

    ``running_since`` is set when the conflict is a run that another caller has claimed
    and not released (see ``Workflow.resume(..., take_over=True)``).
    """

    def __init__(
        self,
        message: str,
        *,
        workflow_id: str | None = None,
        expected_version: int | None = None,
        running_since: datetime | None = None,
    ) -> None:
        super().__init__(message)
        self.workflow_id = workflow_id
        self.expected_version = expected_version
        self.running_since = running_since


class PayloadTooLargeError(PersistenceError):
    """The encoded snapshot is larger than the storage accepts; nothing was written."""

    def __init__(self, message: str, *, size: int | None = None, limit: int | None = None):
        super().__init__(message)
        self.size = size
        self.limit = limit


class StorageUnavailableError(PersistenceError):
    """The storage cannot be reached (the driver's error is the ``__cause__``)."""


class WorkflowError(Exception):
    """Base of the errors raised by the workflow runtime."""


class WorkflowDefinitionError(WorkflowError):
    """The workflow's nodes do not form a valid graph."""


class WorkflowFailedError(WorkflowError):
    """A node spent its attempts; a ``"failed"`` snapshot was saved.

    The node's exception is the ``__cause__``; ``resume(workflow_id)`` retries the node.
    """

    def __init__(self, message: str, *, workflow_id: str, node: str) -> None:
        super().__init__(message)
        self.workflow_id = workflow_id
        self.node = node


class InvalidAnswerError(WorkflowError, ValueError):
    """The answer given to ``resume`` does not fit the type the question asked for.

    ``field`` names the part that does not fit (``answer.amount``, ``answer[2]``); the run
    was not resumed and is stored as it was, at the same version: resume it again with an
    answer that fits the question's ``answer_schema``.
    """

    def __init__(self, message: str, *, field: str = "answer", workflow_id: str | None = None):
        super().__init__(message)
        self.field = field
        self.workflow_id = workflow_id


class InvalidArgumentError(PersistenceError, ValueError):
    """An argument other than the workflow id is out of range or of the wrong type."""
