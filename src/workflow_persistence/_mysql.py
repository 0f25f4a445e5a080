"""MySQL/MariaDB's ``max_allowed_packet``, checked before a save is sent.

A statement larger than ``max_allowed_packet`` makes the server drop the connection
(error 2006, the same as an outage) instead of answering with an error, so the size is
checked on our side first. The drivers send blobs escaped inside the statement text:
each of seven special bytes (NUL, newline, CR, Ctrl-Z, quotes, backslash) takes two.
"""

from __future__ import annotations

from typing import Any

from .errors import PayloadTooLargeError

_LIMIT_KEY = "workflow_persistence.max_allowed_packet"
_SPECIAL_BYTES = (b"\x00", b"\n", b"\r", b"\x1a", b"'", b'"', b"\\")
# Room for the statement text, an escaped 255-character id and the timestamps.
_STATEMENT_OVERHEAD = 4096


def escaped_size(data: bytes | bytearray | memoryview) -> int:
    """Bytes ``data`` takes inside a statement once the driver has escaped it."""
    raw = bytes(data) if isinstance(data, memoryview) else data
    return len(raw) + sum(raw.count(special) for special in _SPECIAL_BYTES)


def check_packet_size(connection: Any, data: bytes | bytearray | memoryview) -> None:
    """Raise PayloadTooLargeError if a save of ``data`` would exceed the server's limit.

    ``connection`` is SQLAlchemy's pooled connection; the limit is read once per
    physical connection and kept in its ``info``.
    """
    limit = connection.info.get(_LIMIT_KEY)
    if limit is None:
        cursor = connection.cursor()
        try:
            cursor.execute("SELECT @@max_allowed_packet")
            limit = int(cursor.fetchone()[0])
        finally:
            cursor.close()
        connection.info[_LIMIT_KEY] = limit
    size = len(data)
    if 2 * size + _STATEMENT_OVERHEAD <= limit:  # the common case: no need to count
        return
    needed = escaped_size(data) + _STATEMENT_OVERHEAD
    if needed > limit:
        raise PayloadTooLargeError(
            f"the snapshot takes {needed} bytes in the statement, more than the server's"
            f" max_allowed_packet of {limit}; raise max_allowed_packet on the server or"
            " store less state. Nothing was written.",
            size=needed,
            limit=limit,
        )
