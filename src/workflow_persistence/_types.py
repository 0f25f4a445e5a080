"""Column types that behave the same on SQLite, PostgreSQL and MySQL/MariaDB."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Dialect, LargeBinary, String
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = ["BinaryData", "UTCDateTime", "WorkflowIdType", "is_mysql", "mysql_binary_collation"]

#: ``data``: LONGBLOB on MySQL/MariaDB (plain BLOB stops at 64 KiB), BYTEA, BLOB.
BinaryData: TypeEngine[bytes] = (
    LargeBinary()
    .with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
    .with_variant(postgresql.BYTEA(), "postgresql")
)


def is_mysql(dialect: Dialect) -> bool:
    return dialect.name in ("mysql", "mariadb")


def mysql_binary_collation(dialect: Dialect) -> str:
    """A binary collation that does not pad, so ``'a'`` and ``'a '`` stay two ids.

    ``utf8mb4_bin`` is PAD SPACE on both servers. A ``mysql://`` URL to MariaDB still
    has the dialect name ``mysql``, so the choice rests on ``is_mariadb``.
    """
    if getattr(dialect, "is_mariadb", False):
        return "utf8mb4_nopad_bin"
    version = dialect.server_version_info
    if version is None or version >= (8, 0, 17):
        return "utf8mb4_0900_bin"
    return "utf8mb4_bin"  # MySQL 5.7 has no binary NO PAD collation: trailing spaces collide


class WorkflowIdType(TypeDecorator[str]):
    """VARCHAR(255) compared by exact code points on every database."""

    impl = String(255)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if is_mysql(dialect):
            return dialect.type_descriptor(
                mysql.VARCHAR(255, charset="utf8mb4", collation=mysql_binary_collation(dialect))
            )
        return dialect.type_descriptor(String(255))


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in Python on every database, with microseconds.

    TIMESTAMPTZ on PostgreSQL; DATETIME(6) holding UTC on MySQL/MariaDB; SQLite's text
    form holding UTC. Naive values are refused rather than guessed at.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if is_mysql(dialect):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"refusing a naive datetime ({value!r}): pass an aware UTC value")
        value = value.astimezone(UTC)
        if dialect.name == "postgresql":
            return value
        return value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
