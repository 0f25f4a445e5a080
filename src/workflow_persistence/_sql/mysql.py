"""MySQL/MariaDB specifics: ``max_allowed_packet`` checked before a save, session bounds.

A statement larger than ``max_allowed_packet`` makes the server drop the connection
(error 2006, the same as an outage) instead of answering with an error, so the size is
checked on our side first.

The MySQL drivers send a blob inside the statement text, and how much room it takes
depends on the driver: PyMySQL 1.2+ writes ``_binary X'<hex>'`` (two bytes per byte);
older PyMySQL and mysqlclient escape seven special bytes (NUL, newline, CR, Ctrl-Z,
quotes, backslash) with a backslash. The driver's own escaper is asked once per
connection which way it goes.

The library's sessions are bounded by its ``timeout`` (see ``_storage.deadlines``): MariaDB's
``max_statement_time`` ends any statement, lock waits included; MySQL's
``max_execution_time`` only SELECTs, so there InnoDB's ``innodb_lock_wait_timeout``
(row locks) and ``lock_wait_timeout`` (metadata locks, a year by default) bound the waits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from workflow_persistence.errors import PayloadTooLargeError

_LIMIT_KEY = "workflow_persistence.max_allowed_packet"
_SIZER_KEY = "workflow_persistence.escaped_size"
_SPECIAL_BYTES = (b"\x00", b"\n", b"\r", b"\x1a", b"'", b'"', b"\\")
# Room for the statement text, an escaped 255-character id and the timestamps.
_STATEMENT_OVERHEAD = 4096
#: The server ended a statement at its time limit: MariaDB's ER_STATEMENT_TIMEOUT and
#: MySQL's ER_QUERY_TIMEOUT. The statement was rolled back; the connection is usable.
STATEMENT_TIMEOUT_CODES = frozenset({1969, 3024})

Sizer = Callable[[bytes | bytearray | memoryview], int]


def backslash_escaped_size(data: bytes | bytearray | memoryview) -> int:
    """Room ``data`` takes when each special byte is escaped with a backslash."""
    raw = bytes(data) if isinstance(data, memoryview) else data
    return len(raw) + sum(raw.count(special) for special in _SPECIAL_BYTES) + 16


def hex_escaped_size(data: bytes | bytearray | memoryview) -> int:
    """Room ``data`` takes as a hex literal: two characters per byte."""
    return 2 * len(data) + 16


def _sizer_for(dbapi_connection: Any) -> Sizer:
    """How this driver escapes a blob, learned from its own escaper."""
    # aiomysql's connection is under SQLAlchemy's adapter; its escaper is the driver's.
    driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)
    escape = getattr(driver, "escape", None) or getattr(driver, "literal", None)
    if escape is None:
        return hex_escaped_size  # unknown driver: assume the larger form
    growth = len(escape(b"a" * 64)) - len(escape(b"a" * 32))
    return hex_escaped_size if growth >= 64 else backslash_escaped_size


def check_packet_size(
    connection: Any, data: bytes | bytearray | memoryview, *texts: str | None
) -> None:
    """Raise PayloadTooLargeError if a save of ``data`` and the JSON ``texts`` beside it
    would exceed the server's limit.

    ``connection`` is SQLAlchemy's pooled connection; what is learned about the server
    and the driver is kept in its ``info``, once per physical connection.
    """
    # A text goes in the statement escaped: at most two bytes for each of its UTF-8
    # bytes, and at most four UTF-8 bytes per character.
    text_room = 8 * sum(len(text) for text in texts if text is not None)
    info = connection.info
    limit = info.get(_LIMIT_KEY)
    if limit is None:
        cursor = connection.cursor()
        try:
            cursor.execute("SELECT @@max_allowed_packet")
            limit = int(cursor.fetchone()[0])
        finally:
            cursor.close()
        info[_LIMIT_KEY] = limit
        info[_SIZER_KEY] = _sizer_for(connection.dbapi_connection)
    if 2 * len(data) + 16 + _STATEMENT_OVERHEAD + text_room <= limit:  # the common case
        return
    if text_room:
        text_room = sum(2 * len(text.encode("utf-8")) for text in texts if text is not None)
    needed = info[_SIZER_KEY](data) + _STATEMENT_OVERHEAD + text_room
    if needed > limit:
        raise PayloadTooLargeError(
            f"the snapshot takes {needed} bytes in the statement, more than the server's"
            f" max_allowed_packet of {limit} (the MySQL driver sends {len(data)} bytes of"
            " data escaped or as hex, and the question and metadata as JSON); raise"
            " max_allowed_packet on the server or store less state. Nothing was written.",
            size=needed,
            limit=limit,
        )


def session_bounds(seconds: float, *, is_mariadb: bool) -> str:
    """``SET SESSION`` bounding statements and lock waits by ``seconds``.

    The InnoDB and metadata lock waits take whole seconds (at least one).
    """
    whole = max(1, int(seconds))
    waits = f"innodb_lock_wait_timeout = {whole}, lock_wait_timeout = {whole}"
    if is_mariadb:
        return f"SET SESSION max_statement_time = {seconds:.3f}, {waits}"
    return f"SET SESSION max_execution_time = {max(1, round(seconds * 1000))}, {waits}"


def is_statement_timeout(exc: BaseException) -> bool:
    """True for the error of a statement the server ended at its time limit."""
    return bool(exc.args) and exc.args[0] in STATEMENT_TIMEOUT_CODES
