"""WorkflowInterruptRepository: snapshot rows inside the caller's Session and transaction."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any, Generic, TypeVar, overload

from sqlalchemy import CursorResult
from sqlalchemy.orm import Session

from ._base import check_aware, check_expected_version, check_limit, version_conflict
from ._ids import check_workflow_id
from ._mysql import check_packet_size
from ._snapshot import StoredSnapshotInfo, utc_now
from ._statements import TableStatements, statements_for
from .errors import InvalidArgumentError
from .models import WorkflowInterrupt, WorkflowInterruptMixin

__all__ = ["WorkflowInterruptRepository"]

ModelT = TypeVar("ModelT", bound=WorkflowInterruptMixin)


class WorkflowInterruptRepository(Generic[ModelT]):
    """Row-level access to stored snapshots: bytes in, bytes out.

    Every method runs inside ``session``'s current transaction and never commits, so a
    save can share a transaction with the caller's own writes (and be rolled back with
    them). Each save is one dialect-native statement with a compare-and-set on
    ``version``. ``model`` is the mapped class: ``WorkflowInterrupt``, or a host app's
    class built on ``WorkflowInterruptMixin``.
    """

    @overload
    def __init__(
        self: WorkflowInterruptRepository[WorkflowInterrupt], session: Session
    ) -> None: ...

    @overload
    def __init__(self, session: Session, model: type[ModelT]) -> None: ...

    def __init__(self, session: Session, model: type[Any] = WorkflowInterrupt) -> None:
        self.session = session
        self.model = model
        self._table: Any = model.__table__

    def _statements(self) -> TableStatements:
        return statements_for(self._table, self.session.get_bind().dialect)

    def upsert(
        self,
        workflow_id: str,
        data: bytes | bytearray | memoryview,
        *,
        expected_version: int | None = None,
    ) -> int:
        """Create or replace the row; return its new version.

        With ``expected_version=N`` the row is written only if its version is N (0: only
        if there is no row), else ConflictError is raised and nothing changes.
        """
        workflow_id = check_workflow_id(workflow_id)
        expected = check_expected_version(expected_version)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidArgumentError(f"data must be bytes, not {type(data).__name__}")
        statements = self._statements()
        if statements.family == "mysql":
            check_packet_size(self.session.connection().connection, data)
        params: dict[str, Any] = {"wf_id": workflow_id, "wf_data": data, "now": utc_now()}
        execute = self.session.execute
        if expected is None:
            result: CursorResult[Any] = execute(statements.upsert, params)  # type: ignore[assignment]
            if statements.family == "mysql":  # no RETURNING: the version is in lastrowid
                version = statements.upserted_version(None, result.lastrowid)
            else:
                version = statements.upserted_version(result.scalar_one(), None)
        elif expected == 0:
            result = execute(statements.insert_new, params)  # type: ignore[assignment]
            lastrowid = result.lastrowid if statements.family == "mysql" else None
            if not statements.inserted_new(result.rowcount, lastrowid):
                raise version_conflict(workflow_id, 0, None)
            version = 1
        else:
            params["expected_version"] = expected
            result = execute(statements.update_if_version, params)  # type: ignore[assignment]
            if result.rowcount != 1:
                raise version_conflict(workflow_id, expected, None)
            version = expected + 1
        self._forget(workflow_id)
        return version

    def get(self, workflow_id: str) -> ModelT | None:
        """The row as a persistent instance in the session, freshly read, or None."""
        workflow_id = check_workflow_id(workflow_id)
        return self.session.get(self.model, workflow_id, populate_existing=True)

    def exists(self, workflow_id: str) -> bool:
        workflow_id = check_workflow_id(workflow_id)
        params = {"wf_id": workflow_id}
        return self.session.execute(self._statements().select_version, params).first() is not None

    def delete(self, workflow_id: str) -> bool:
        """Delete the row; True if there was one."""
        workflow_id = check_workflow_id(workflow_id)
        result: CursorResult[Any] = self.session.execute(  # type: ignore[assignment]
            self._statements().delete_one, {"wf_id": workflow_id}
        )
        self._forget(workflow_id, expunge=True)
        return result.rowcount > 0

    def list(
        self, *, updated_before: datetime | None = None, limit: int | None = None
    ) -> builtins.list[StoredSnapshotInfo]:
        """Rows newest first, without loading ``data``."""
        before = None if updated_before is None else check_aware(updated_before, "updated_before")
        limit = check_limit(limit)
        stmt = self._statements().select_infos(before=before is not None, limited=limit is not None)
        params: dict[str, Any] = {}
        if before is not None:
            params["before"] = before
        if limit is not None:
            params["limit"] = limit
        return [StoredSnapshotInfo(*row) for row in self.session.execute(stmt, params)]

    def delete_older_than(self, cutoff: datetime, *, limit: int | None = None) -> int:
        """Delete rows last updated before ``cutoff`` (at most ``limit``); return how many."""
        cutoff = check_aware(cutoff, "cutoff")
        if limit is not None and (type(limit) is not int or limit <= 0):
            raise InvalidArgumentError(f"limit must be None or an int > 0, not {limit!r}")
        stmt = self._statements().delete_older_than_batch(limit)
        result: CursorResult[Any] = self.session.execute(stmt, {"cutoff": cutoff})  # type: ignore[assignment]
        # Rows deleted by SQL leave stale instances behind; drop what the session holds.
        for obj in builtins.list(self.session.identity_map.values()):
            if isinstance(obj, self.model) and obj.updated_at < cutoff:
                self.session.expunge(obj)
        return result.rowcount

    def _forget(self, workflow_id: str, *, expunge: bool = False) -> None:
        """Keep the identity map honest after a Core write to ``workflow_id``'s row."""
        key = self.session.identity_key(self.model, (workflow_id,))
        obj = self.session.identity_map.get(key)
        if obj is not None:
            if expunge:
                self.session.expunge(obj)
            else:
                self.session.expire(obj)
