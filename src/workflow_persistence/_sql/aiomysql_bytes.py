"""A repair for aiomysql 0.3.2 on PyMySQL 1.2.3 and later, which fail every bytes parameter.

aiomysql escapes bytes with ``pymysql.converters.escape_bytes_prefixed``; PyMySQL 1.2.3
turned that name into a placeholder string (kept only so the import works), so every
statement with a bytes parameter raises ``TypeError: 'str' object is not callable``
(aio-libs/aiomysql#1080). A snapshot's ``data`` is bytes, so without this no save works.

:func:`repair` puts back a function where the placeholder stands, writing the form PyMySQL
1.2.3 itself writes (``_binary X'<hex>'``). It touches nothing on versions that work, and
runs before the library first uses an aiomysql connection.
"""

from __future__ import annotations

import importlib

__all__ = ["escape_bytes_prefixed", "repair"]


def escape_bytes_prefixed(value: bytes | bytearray, mapping: object = None) -> str:
    """A blob literal MySQL and MariaDB read back byte for byte."""
    return f"_binary X'{value.hex()}'"


def repair() -> None:
    """Mend aiomysql's bytes escaping if this PyMySQL broke it; idempotent."""
    try:
        connection = importlib.import_module("aiomysql.connection")
    except ImportError:
        return
    if not callable(getattr(connection, "escape_bytes_prefixed", None)):
        setattr(connection, "escape_bytes_prefixed", escape_bytes_prefixed)  # noqa: B010
