"""Former home of the column types, now :mod:`workflow_persistence.types`.

Revisions that host apps generated before the types were public import this module, so
it stays importable; new code imports :mod:`workflow_persistence.types`.
"""

from __future__ import annotations

from .types import BinaryData, UTCDateTime, WorkflowIdType, is_mysql, mysql_binary_collation

__all__ = ["BinaryData", "UTCDateTime", "WorkflowIdType", "is_mysql", "mysql_binary_collation"]
