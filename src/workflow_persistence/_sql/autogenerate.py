"""What Alembic's autogenerate needs to know about the library's version table.

``workflow-persistence migrate`` and ``DatabasePersistence`` record the library's revision
in a version table of their own. A host app's Alembic only knows its own version table,
so a host whose ``target_metadata`` lists ``workflow_persistence.metadata`` saw ours as a
table to drop. Registering here, when the package is imported, makes that setup clean
without asking the host for a hook (hosts that pass ``include_name`` were clean already).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import alembic.util
from alembic.autogenerate import comparators
from alembic.operations import ops
from sqlalchemy import MetaData

__all__ = ["leave_version_table_alone"]

#: Alembic 1.18+ asks comparators whether to go on; earlier ones ignore the answer.
_CONTINUE = getattr(getattr(alembic.util, "PriorityDispatchResult", None), "CONTINUE", None)


def _target_metadata(autogen_context: Any) -> list[MetaData]:
    target = autogen_context.metadata
    if target is None:
        return []
    return [target] if isinstance(target, MetaData) else list(target)


def _drops_table(op: ops.MigrateOperation, name: str) -> bool:
    return isinstance(op, ops.DropTableOp) and op.table_name == name and op.schema is None


def _register_last(comparator: Callable[..., Any]) -> None:
    """Run ``comparator`` after Alembic's own table comparison."""
    priority = getattr(alembic.util, "DispatchPriority", None)
    if priority is None:  # before Alembic 1.18 comparators run in the order registered
        comparators.dispatch_for("schema")(comparator)
    else:
        comparators.dispatch_for("schema", priority=priority.LAST)(comparator)


def leave_version_table_alone(metadata: MetaData, version_table: str) -> None:
    """Never propose to drop ``version_table`` in an env whose target lists ``metadata``.

    Only that one table, only in the default schema, and only when it is not the env's
    own version table: a host that does not list ``metadata`` still hears about it.
    """

    def keep_version_table(autogen_context: Any, upgrade_ops: ops.UpgradeOps, _schemas: Any) -> Any:
        context = autogen_context.migration_context
        listed = any(m is metadata for m in _target_metadata(autogen_context))
        if listed and context.version_table != version_table:
            kept = [op for op in upgrade_ops.ops if not _drops_table(op, version_table)]
            upgrade_ops.ops[:] = kept
        return _CONTINUE

    _register_last(keep_version_table)
