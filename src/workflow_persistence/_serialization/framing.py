"""The header every encoded record starts with, so a reader knows what wrote it.

Layout: ``wfp:<format>:<detail>\\n<body>``, all ASCII up to the newline. ``<format>`` names
the encoder (``msgpack``, ``msgpack+zlib``, ``pickle``); ``<detail>`` is the encoder's
integrity field (a CRC32 of the body, or an HMAC), plus the decoded length for compressed
bodies. Anything else is not ours and raises CorruptSnapshotError.
"""

from __future__ import annotations

import zlib

from workflow_persistence.errors import CorruptSnapshotError

MAGIC = b"wfp:"
_MAX_HEADER = 160


def frame(fmt: bytes, detail: bytes, body: bytes) -> bytes:
    """Prefix ``body`` with the header naming ``fmt``."""
    return b"".join((MAGIC, fmt, b":", detail, b"\n", body))


def unframe(data: bytes | bytearray | memoryview) -> tuple[bytes, bytes, memoryview]:
    """Split a record into ``(format, detail, body)``; the body is a zero-copy view."""
    raw = data if type(data) is bytes else bytes(memoryview(data)[:_MAX_HEADER])
    if raw[:4] != MAGIC:
        raise CorruptSnapshotError(
            "not a workflow-persistence record: it does not start with the 'wfp:' header"
        )
    end = raw.find(b"\n", 4, _MAX_HEADER)
    if end < 0:
        raise CorruptSnapshotError("damaged record: its header has no end")
    fmt, sep, detail = raw[4:end].partition(b":")
    if not sep or not fmt:
        raise CorruptSnapshotError("damaged record: its header names no format")
    return fmt, detail, memoryview(data)[end + 1 :]


def crc_detail(body: bytes | memoryview) -> bytes:
    return b"%08x" % zlib.crc32(body)


def check_crc(detail: bytes, body: memoryview) -> None:
    if detail != crc_detail(body):
        raise CorruptSnapshotError(
            "damaged record: its checksum does not match its contents"
            " (the stored bytes were changed or truncated)"
        )


def format_name(fmt: bytes) -> str:
    return fmt.decode("ascii", "replace")
