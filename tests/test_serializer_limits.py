"""Limits that hold under any input (issue 7, items 1, 2 and 9): how deep values may nest,
what reading a record may cost, and values no reader should have to build.

Anything that could crash the interpreter runs in a child process, so a segfault fails the
test rather than the run; memory is measured in a child under an address-space limit.
"""

from __future__ import annotations

import base64
import collections
import os
import subprocess
import sys
import textwrap
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import msgpack
import pytest

from workflow_persistence import (
    CorruptSnapshotError,
    Decision,
    JsonSerializer,
    SerializationError,
    UnresolvedObject,
    WorkflowSnapshot,
)
from workflow_persistence._serialization import framing as _framing
from workflow_persistence._serialization.codec import (
    EXT_BIGINT_BYTES,
    EXT_DATE,
    EXT_DATETIME_NAIVE,
    EXT_DATETIME_UTC,
    EXT_SET,
    EXT_TIME,
    MARK_SET,
)

from .samples import Money, serializer

# A child imports exactly what this process does (the worktree's sources, say).
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}

# Shared by the children: values nested n levels deep, and format 1 records.
CHILD_HELPERS = textwrap.dedent(
    """
    import collections, msgpack, resource, sys, threading
    from dataclasses import dataclass
    from datetime import UTC, datetime, timedelta, timezone
    from workflow_persistence import (
        CorruptSnapshotError, JsonSerializer, SerializationError, WorkflowSnapshot,
    )
    from workflow_persistence._serialization import framing as _framing
    from tests.test_serializer_limits import Link, nest

    NOW = datetime(2026, 1, 1, tzinfo=UTC).__reduce_ex__(4)[1][0]

    def format_1(state, event=None):
        # What version 0.1 wrote: values inside a tuple, set or object packed on their own.
        row = [1, "w", "interrupted", state, None, event, [], None, [], {}, None, {},
               msgpack.ExtType(5, NOW), msgpack.ExtType(5, NOW), 0]
        body = msgpack.packb(row, use_bin_type=True)
        return _framing.frame(b"msgpack", _framing.crc_detail(body), body)

    def format_1_nested(code, n):
        value = 0
        for _ in range(n):
            entry = [value] if code == 1 else ["x:Y", "state", value]
            value = msgpack.ExtType(code, msgpack.packb(entry, use_bin_type=True))
        return value

    def reframe(body):
        return _framing.frame(b"msgpack", _framing.crc_detail(body), body)

    def outcome(call):
        try:
            call()
        except Exception as exc:
            return type(exc).__name__
        return "ok"

    def in_thread(work, stack):
        errors = []
        def run():
            try:
                work()
            except BaseException as exc:
                errors.append(exc)
        threading.stack_size(stack)
        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
        threading.stack_size(0)
        if errors:
            raise errors[0]

    def peak_mib():
        with open("/proc/self/status") as status:
            [kib] = [line.split()[1] for line in status if line.startswith("VmHWM:")]
        return int(kib) // 1024

    def rss_mib():
        with open("/proc/self/status") as status:
            [kib] = [line.split()[1] for line in status if line.startswith("VmRSS:")]
        return int(kib) // 1024
    """
)


def run_child(code: str, timeout: float = 300) -> str:
    """Run ``code`` after the helpers in a fresh interpreter; its stdout, if it exited 0."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD_HELPERS + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, env=CHILD_ENV, check=False,
    )
    assert done.returncode == 0, f"the child ended with {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout


def nest(kind: str, n: int, leaf: Any = 0) -> Any:
    value = leaf
    for _ in range(n):
        if kind == "list":
            value = [value]
        elif kind == "tuple":
            value = (value,)
        elif kind == "dict":
            value = {"k": value}
        elif kind == "frozenset":
            value = frozenset({value})
        elif kind == "deque":
            value = collections.deque([value])
        else:
            value = Link(value)
    return value


@dataclass
class Link:
    next: Any = None


STEP = {"list": "[0]", "tuple": "[0]", "frozenset": "[0]", "deque": "[0]", "dict": "['k']",
        "object": ".next"}


def stored(value: Any, **options: Any) -> WorkflowSnapshot:
    ser = JsonSerializer(types=[Link], **options)
    return ser.loads(ser.dumps(WorkflowSnapshot("w", state={"v": value})))


def reframe(body: bytes) -> bytes:
    return _framing.frame(b"msgpack", _framing.crc_detail(body), body)


def row_of(record: bytes) -> list[Any]:
    """A record's envelope as MessagePack values (arrays as tuples: they may be keys)."""
    body = record.partition(b"\n")[2]
    return list(msgpack.unpackb(body, strict_map_key=False, use_list=False,
                                ext_hook=msgpack.ExtType, timestamp=0))


def with_state(state: dict[str, Any]) -> bytes:
    """A record of this version whose state is ``state``, packed as given, with a good CRC."""
    row = row_of(JsonSerializer().dumps(WorkflowSnapshot("w")))
    row[3] = state
    return reframe(msgpack.packb(row, use_bin_type=True))


def format_1(state: dict[str, Any]) -> bytes:
    """A record as version 0.1 wrote it (envelope version 1, values nested as payloads)."""
    now = datetime(2026, 1, 1, tzinfo=UTC).__reduce_ex__(4)[1][0]
    row = [1, "w", "interrupted", state, None, None, [], None, [], {}, None, {},
           msgpack.ExtType(EXT_DATETIME_UTC, now), msgpack.ExtType(EXT_DATETIME_UTC, now), 0]
    return reframe(msgpack.packb(row, use_bin_type=True))

# -- item 1: how deep values nest -------------------------------------------------------------


@pytest.mark.parametrize("kind", list(STEP))
def test_values_nest_up_to_max_depth_and_deeper_ones_are_refused_by_path(kind: str) -> None:
    assert stored(nest(kind, 100)).state["v"] == nest(kind, 100)
    with pytest.raises(SerializationError) as info:
        JsonSerializer(types=[Link]).dumps(WorkflowSnapshot("w", state={"v": nest(kind, 101)}))
    assert info.value.path == "state['v']" + STEP[kind] * 100
    assert "more than 100 levels deep" in str(info.value)


def test_max_depth_is_an_option_of_the_serializer() -> None:
    shallow = JsonSerializer(max_depth=3)
    assert shallow.loads(shallow.dumps(WorkflowSnapshot("w", state={"v": [[[1]]]}))).state == {
        "v": [[[1]]]
    }
    with pytest.raises(SerializationError, match="3 levels"):
        shallow.dumps(WorkflowSnapshot("w", state={"v": [[[[1]]]]}))
    assert stored(nest("list", 400), max_depth=400).state["v"] == nest("list", 400)
    for bad in (0, -1, 401, 2.0, "100", True, None):
        with pytest.raises(ValueError, match="max_depth"):
            JsonSerializer(max_depth=bad)  # type: ignore[arg-type]


def test_large_records_save_and_load_with_a_max_depth_not_used_before() -> None:
    # Depth checkers for large bodies are not pooled; their levels may have no pool yet.
    for max_depth in (77, 78):
        ser = JsonSerializer(max_depth=max_depth)
        blob = os.urandom(300_000)
        record = ser.dumps(WorkflowSnapshot("w", state={"blob": blob}))
        assert JsonSerializer(max_depth=max_depth + 2).loads(record).state["blob"] == blob
        assert ser.loads(record).state["blob"] == blob


def test_after_a_large_value_of_many_datetimes_values_are_still_kept_exactly() -> None:
    # Such a value makes the serializer measure the next ones before packing them, so that
    # UTC datetimes are packed in C: any other datetime must still keep its zone and fold.
    ser = JsonSerializer(max_depth=20)
    day = datetime(2026, 1, 1, tzinfo=UTC)
    many = [day + timedelta(seconds=i) for i in range(4000)]
    assert ser.loads(ser.dumps(WorkflowSnapshot("w", state={"v": many}))).state["v"] == many
    assert ser._codec._walk_first
    berlin = datetime(2026, 10, 25, 2, 30, tzinfo=ZoneInfo("Europe/Berlin"), fold=1)
    other_utc = [day.astimezone(timezone(timedelta(0), "Z")), day.astimezone(ZoneInfo("UTC"))]
    values = [[*many, berlin], [day.replace(fold=1)], other_utc]
    for value in values:
        back = ser.loads(ser.dumps(WorkflowSnapshot("w", state={"v": value}))).state["v"]
        assert [(v.tzinfo, v.fold) for v in back] == [(v.tzinfo, v.fold) for v in value]
        assert back == value
    with pytest.raises(SerializationError, match="20 levels"):
        ser.dumps(WorkflowSnapshot("w", state={"v": [*many, nest("list", 21)]}))
    assert ser.loads(ser.dumps(WorkflowSnapshot("w", state={"v": nest("list", 20)}))).state[
        "v"
    ] == nest("list", 20)


def test_a_record_nested_deeper_than_the_readers_max_depth_is_corrupt() -> None:
    record = JsonSerializer(max_depth=300).dumps(
        WorkflowSnapshot("w", state={"v": nest("tuple", 200)})
    )
    with pytest.raises(CorruptSnapshotError, match="max_depth"):
        JsonSerializer().loads(record)
    assert JsonSerializer(max_depth=300).loads(record).state["v"] == nest("tuple", 200)


@pytest.mark.parametrize("levels", [101, 1023, 1024, 1100, 20_000])
def test_arrays_nested_deeper_than_allowed_are_corrupt(levels: int) -> None:
    # MessagePack's own parser stops at 1024 levels; below that, the reader's limit does.
    row = row_of(JsonSerializer().dumps(WorkflowSnapshot("w", state={"v": "__deep__"})))
    body = msgpack.packb(row, use_bin_type=True).replace(
        msgpack.packb("__deep__"), b"\x91" * levels + b"\x00"
    )
    with pytest.raises(CorruptSnapshotError):
        JsonSerializer().loads(reframe(body))
    with pytest.raises(CorruptSnapshotError):
        JsonSerializer().loads(format_1({"v": msgpack.ExtType(1, b"\x91" * levels + b"\x00")}))


def test_depth_counts_the_steps_from_a_snapshot_field() -> None:
    # ``state['v'][0]`` is two steps from ``state``, ``interrupt[0]`` one from ``interrupt``.
    # A history entry's payload and answer count two steps more: ``history[0]`` and the entry.
    ser = JsonSerializer()
    asked = datetime(2026, 1, 1, tzinfo=UTC)
    snapshot = WorkflowSnapshot(
        "w", interrupt=nest("list", 101), history=[Decision("n", nest("list", 99), None, asked)]
    )
    loaded = ser.loads(ser.dumps(snapshot))
    assert loaded.interrupt == nest("list", 101)
    assert loaded.history[0].payload == nest("list", 99)
    with pytest.raises(SerializationError) as info:
        ser.dumps(WorkflowSnapshot("w", interrupt=nest("list", 102)))
    assert info.value.path == "interrupt" + "[0]" * 101
    with pytest.raises(SerializationError) as info:
        ser.dumps(WorkflowSnapshot("w", history=[Decision("n", nest("list", 100), None, asked)]))
    assert info.value.path == "history[0].payload" + "[0]" * 99


@pytest.mark.timeout(600)
def test_deep_values_and_records_never_crash_the_process() -> None:
    """Saving and loading, in the main thread and in one with a 256 KiB C stack: deep
    values, MessagePack nested to its limit and beyond, and records of the previous
    format nested ext within ext (each level an ``unpackb`` of its own)."""
    out = run_child(
        """
        import json
        from workflow_persistence import StartEvent, StopEvent, Workflow

        def begin(event: StartEvent, state) -> StopEvent:
            return StopEvent(result=None)

        # Built and freed in the main thread: freeing a deque nested 5000 deep recurses in
        # C, which a small stack would not survive whatever the serializer does.
        values = {(kind, n): nest(kind, n)
                  for kind in ("list", "tuple", "dict", "frozenset", "deque", "object")
                  for n in (100, 101, 1000, 5000)}
        deep_state = {"v": nest("tuple", 200)}

        def checks():
            ser = JsonSerializer(types=[Link])
            stand_in = JsonSerializer(unknown_classes="stand-in")
            seen = {}
            for (kind, n), value in values.items():
                snapshot = WorkflowSnapshot("w", state={"v": value})
                if n == 100:
                    back = ser.loads(ser.dumps(snapshot)).state["v"]
                    seen[f"{kind} 100"] = "ok" if back == value else "changed"
                else:
                    seen[f"{kind} {n}"] = outcome(lambda: ser.dumps(snapshot))
            for levels in (200, 1100):
                body = msgpack.packb({"v": "__deep__"}).replace(
                    msgpack.packb("__deep__"), b"\\x91" * levels + b"\\x00")
                seen[f"arrays {levels}"] = outcome(lambda: ser.loads(reframe(
                    b"\\xdc\\x00\\x12\\x03\\xa1w\\xabinterrupted" + body + b"\\xc0" * 14)))
            for code in (1, 12):
                for n in (50, 200, 2000):
                    record = format_1({"v": format_1_nested(code, n)})
                    seen[f"ext {code} {n}"] = outcome(lambda: stand_in.loads(record))
            workflow = Workflow([begin])
            seen["start"] = outcome(lambda: workflow.start(deep_state))
            return seen

        main = checks()
        small = {}
        in_thread(lambda: small.update(checks()), 256 * 1024)
        print(json.dumps([main, small]))
        """
    )
    import json

    for seen in json.loads(out):
        for kind in STEP:
            assert seen[f"{kind} 100"] == "ok"
            for n in (101, 1000, 5000):
                assert seen[f"{kind} {n}"] == "SerializationError", (kind, n)
        assert seen["arrays 200"] == seen["arrays 1100"] == "CorruptSnapshotError"
        for code in (1, 12):
            assert seen[f"ext {code} 50"] == "ok"
            assert seen[f"ext {code} 200"] == seen[f"ext {code} 2000"] == "CorruptSnapshotError"
        assert seen["start"] == "SerializationError"


FORMAT_1_RECORD = base64.b64decode(
    "d2ZwOm1zZ3BhY2s6MGZhNjU5YWQKnwGpcmVmdW5kLTQyq2ludGVycnVwdGVk3gAnpHRleHS0R3LDvMOfZSwg"
    "5LiW55WMIPCfmoClZW1wdHmgo2ludCqobmVnYXRpdmX5o2JpZ8cNDxAAAAAAAAAAAAAAAAClZmxvYXTLQAoA"
    "AAAAAACkYm9vbMOkbm9uZcCkbGlzdJMBo3R3b5IDgaRmb3VyBKZuZXN0ZWSBoWGBoWKBoWOSwMKoaW50X2tl"
    "eXOCAaNvbmUCo3R3b6p0dXBsZV9rZXlzgdYBkgGhYaRwYWlypXR1cGxlxwkBkwHHAwGSAgOQo3NldNYCkwEC"
    "A6lmcm96ZW5zZXTHBQOSoXmheKVieXRlc8QOAP8gYmluYXJ5IBonIlypYnl0ZWFycmF5xAdtdXRhYmxlrGRh"
    "dGV0aW1lX3V0Y8cKBQfqCxgJHg8B4kCuZGF0ZXRpbWVfbmFpdmXHCgQH6gECAwQFAAAGr2RhdGV0aW1lX29m"
    "ZnNldMceBpLECgfqAwEMAAAAAACTpWZpeGVk0/////18RRQAwK1kYXRldGltZV96b25lxyEGksQKB+qKGQIe"
    "AAAAAJKkem9uZa1FdXJvcGUvQmVybGlupGRhdGXWBwfPDB+kdGltZccKCJLEBhc7Ow9CP8CndGltZV90escS"
    "CJLEBggAAAAAAJOlZml4ZWQAwKl0aW1lZGVsdGHWCZP/BQenZGVjaW1hbMcJCjEyMzQuNTY3OKtkZWNpbWFs"
    "X25hbscJCi1JbmZpbml0eaR1dWlk2AsSNFZ4EjRWeBI0VngSNFZ4pGVudW3HIgyTtnRlc3RzLnNhbXBsZXM6"
    "UHJpb3JpdHmkZW51baRoaWdoqGludF9lbnVtxxsMk7N0ZXN0cy5zYW1wbGVzOkxldmVspGVudW0CpW1vbmV5"
    "xzwMk7N0ZXN0cy5zYW1wbGVzOk1vbmV5qWRhdGFjbGFzc4KmYW1vdW50xwUKMzAuMDCoY3VycmVuY3mjRVVS"
    "qGN1c3RvbWVyx1IMk7Z0ZXN0cy5zYW1wbGVzOkN1c3RvbWVyqWRhdGFjbGFzc4OlZW1haWyvYW5hQGV4YW1w"
    "bGUuY29tpXNpbmNl1gcH5AUBpHRhZ3PHBQORo3ZpcKZsZWRnZXLHNwyTtHRlc3RzLnNhbXBsZXM6TGVkZ2Vy"
    "pXN0YXRlgadlbnRyaWVzkccOAZKmcmVmdW5kxwMKLTMwqG1lc3NhZ2VzlYOkcm9sZaR1c2Vyp2NvbnRlbnSl"
    "aGVsbG+iYXTHCgUH6gsYCQAAAAAAg6Ryb2xlpHVzZXKnY29udGVudKVoZWxsb6JhdMcKBQfqCxgJAAEAAACD"
    "pHJvbGWkdXNlcqdjb250ZW50pWhlbGxvomF0xwoFB+oLGAkAAgAAAIOkcm9sZaR1c2Vyp2NvbnRlbnSlaGVs"
    "bG+iYXTHCgUH6gsYCQADAAAAg6Ryb2xlpHVzZXKnY29udGVudKVoZWxsb6JhdMcKBQfqCxgJAAQAAAClZGVx"
    "dWXHChCSBZIBxwMBkgIDpWFycmF5xxIRk6FpBMQMAQAAAP7///8DAAAApHpvbmXHFBKSpHpvbmWtRXVyb3Bl"
    "L0JlcmxpbqpkZWVwX3R1cGxlx3UBkcdxAZHHbQGRx2kBkcdlAZHHYQGRx10BkcdZAZHHVQGRx1EBkcdNAZHH"
    "SQGRx0UBkcdBAZHHPQGRxzkBkcc1AZHHMQGRxy0BkccpAZHHJQGRxyEBkccdAZHHGQGRxxUBkccRAZHHDQGR"
    "xwkBkccFAZHVAZEArXNldF9vZl90dXBsZXPHEQKSxwMBkgEC1wGSA8cDAZIEBadhcHByb3Zlx3YMk7V0ZXN0"
    "cy5zYW1wbGVzOkRyYWZ0ZWSpZGF0YWNsYXNzgqR0ZXh0rVJlZnVuZCAzMCBFVVKlbW9uZXnHOAyTs3Rlc3Rz"
    "LnNhbXBsZXM6TW9uZXmpZGF0YWNsYXNzgqZhbW91bnTVCjMwqGN1cnJlbmN5o0VVUpOlZHJhZnSlY2hlY2ul"
    "ZHJhZnSCqHF1ZXN0aW9uqEFwcHJvdmU/pmFtb3VudNUKMzCSlqVjaGVja4GhcaNvaz+jeWVzxwoFB+oLGAkA"
    "AAAAAMcKBQfqCxgJBQAAAAAAlqdhcHByb3ZlgahxdWVzdGlvbqhBcHByb3ZlP8DHCgUH6gsYCQYAAAAAwACD"
    "pWRyYWZ0AqVjaGVjawGnYXBwcm92ZQGVpWNoZWNrrFRpbWVvdXRFcnJvcqRzbG932SZUcmFjZWJhY2sgKG1v"
    "c3QgcmVjZW50IGNhbGwgbGFzdCk6IC4uLscKBQfqCxgJAAAAAACDpHVzZXKjYW5hpnRlbmFudKRhY21lpHRh"
    "Z3OSpnJlZnVuZKJldccKBQfqCxsQESoF0xvHCgUH6gsbEBEqBdMgAA=="
)


# Written before values were flat, with envelope version 2 (named runs, kept results).
ENVELOPE_2_RECORD = base64.b64decode(
    "d2ZwOm1zZ3BhY2s6Mzg4M2NhOTMK3AASAqlyZWZ1bmQtNDOpY29tcGxldGVkhKpkZWVwX3R1cGxlx3UBkcdx"
    "AZHHbQGRx2kBkcdlAZHHYQGRx10BkcdZAZHHVQGRx1EBkcdNAZHHSQGRx0UBkcdBAZHHPQGRxzkBkcc1AZHH"
    "MQGRxy0BkccpAZHHJQGRxyEBkccdAZHHGQGRxxUBkccRAZHHDQGRxwkBkccFAZHVAZEApWRlcXVlxwoQkgWS"
    "AccDAZICA6Vtb25lecc8DJOzdGVzdHMuc2FtcGxlczpNb25lealkYXRhY2xhc3OCpmFtb3VudMcFCjMwLjAw"
    "qGN1cnJlbmN5o0VVUq1zZXRfb2ZfdHVwbGVzxxECkscDAZIBAtcBkgPHAwGSBAXAwJDAkIDAgMcKBQfqCxgJ"
    "AAAAAADHCgUH6gsYCQUAAAAAAKdyZWZ1bmRzgahhcHByb3ZlZMdBAZLDxzwMk7N0ZXN0cy5zYW1wbGVzOk1v"
    "bmV5qWRhdGFjbGFzc4KmYW1vdW50xwUKMzAuMDCoY3VycmVuY3mjRVVSxwoFB+oMGAkeAAAAAA=="
)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("record", [FORMAT_1_RECORD, ENVELOPE_2_RECORD], ids=["v1", "v2"])
def test_records_of_the_previous_format_load_in_any_thread(record: bytes) -> None:
    """Written by version 0.1 and by the next (a 30-deep tuple in it: 30 nested payloads)."""
    loaded = serializer().loads(record)
    if record is ENVELOPE_2_RECORD:
        assert loaded.workflow_name == "refunds"
        assert loaded.result == {"approved": (True, Money(Decimal("30.00")))}
        assert loaded.expires_at == datetime(2026, 12, 24, 9, 30, tzinfo=UTC)
    assert loaded.state["deep_tuple"] == nest("tuple", 30)
    assert loaded.state["deque"] == collections.deque([1, (2, 3)], maxlen=5)
    assert loaded.state["money"] == Money(loaded.state["money"].amount)
    assert loaded.state["set_of_tuples"] == {(1, 2), (3, (4, 5))}
    again = serializer().loads(serializer().dumps(loaded))
    assert again.state == loaded.state
    out = run_child(
        f"""
        from tests.samples import serializer
        record = {record!r}
        found = []
        in_thread(lambda: found.append(serializer().loads(record).state["deep_tuple"]),
                  256 * 1024)
        print(found[0] == nest("tuple", 30))
        """
    )
    assert out.strip() == "True"


# -- item 2: what reading a record may cost -----------------------------------------------------

_MEMORY = """
    import json, os, zlib
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    ser = JsonSerializer(unknown_classes="stand-in")

    def record(fmt, body):
        if fmt == "zlib":
            packed = zlib.compress(body, 9)
            detail = b"%s:%d" % (_framing.crc_detail(packed), len(body))
            return _framing.frame(b"msgpack+zlib", detail, packed)
        return reframe(body)

    def nested_copies(layers, size):
        value = msgpack.ExtType(15, bytes(size))  # a big int of zeros
        for _ in range(layers):
            value = msgpack.ExtType(1, msgpack.packb([value]))
        return value

    def envelope(state_value):
        row = [1, "w", "interrupted", {"v": state_value}, None, None, [], None, [], {}, None,
               {}, msgpack.ExtType(5, NOW), msgpack.ExtType(5, NOW), 0]
        return msgpack.packb(row, use_bin_type=True)

    many = 40_000_000
    cases = {
        "zlib of empty lists": record("zlib", b"\\xdd" + many.to_bytes(4, "big") + b"\\x90" * many),
        "zlib of nested copies": record("zlib", envelope(nested_copies(150, 8 << 20))),
        "nested copies": record("msgpack", envelope(nested_copies(150, 1_000_000))),
        "a million empty lists": record(
            "msgpack", b"\\xdd\\x00\\x0f\\x42\\x40" + b"\\x90" * 1_000_000
        ),
        "arrays claiming items": record("msgpack", b"\\xdd\\x00\\x10\\x00\\x00" * 1000),
    }
    sizes = {name: len(data) for name, data in cases.items()}
    results = {}
    for name, data in cases.items():
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # VmHWM starts again from the current RSS
        before = rss_mib()
        results[name] = [outcome(lambda: ser.loads(data)), peak_mib() - before]
    print(json.dumps([sizes, results]))
"""


@pytest.mark.timeout(600)
def test_crafted_records_of_at_most_a_mebibyte_cost_little_memory() -> None:
    import json

    sizes, results = json.loads(run_child(_MEMORY))
    for name, (outcome, growth_mib) in results.items():
        assert sizes[name] <= 1 << 20, name
        assert outcome == "CorruptSnapshotError", (name, outcome)
        assert growth_mib < 512, f"{name} lifted the peak RSS by {growth_mib} MiB"


def test_a_body_inflating_more_than_six_times_is_refused_before_it_is_inflated() -> None:
    body = serializer(compress_threshold=None).dumps(WorkflowSnapshot("w", state={
        "zeros": bytes(1 << 20)
    })).partition(b"\n")[2]
    packed = zlib.compress(body)
    record = _framing.frame(
        b"msgpack+zlib", b"%s:%d" % (_framing.crc_detail(packed), len(body)), packed
    )
    with pytest.raises(CorruptSnapshotError, match="6 times"):
        JsonSerializer().loads(record)
    # What it would refuse, the writer stores as it is.
    written = JsonSerializer(compress_threshold=0).dumps(WorkflowSnapshot("w", state={
        "zeros": bytes(1 << 20)
    }))
    assert written.startswith(b"wfp:msgpack:")
    assert JsonSerializer().loads(written).state["zeros"] == bytes(1 << 20)


# -- item 9: values no reader should have to build ----------------------------------------------


def _time_payload(state: bytes) -> bytes:
    payload: bytes = msgpack.packb([state, None], use_bin_type=True)
    return payload


IMPOSSIBLE = [
    msgpack.ExtType(EXT_DATE, b"\x07\xe4\x02\x00"),  # 2020-02-00
    msgpack.ExtType(EXT_DATE, b"\x07\xe4\x02\x1e"),  # 2020-02-30
    msgpack.ExtType(EXT_DATE, b"\x00\x00\x01\x01"),  # year 0
    msgpack.ExtType(EXT_DATETIME_NAIVE, b"\x07\xe4\x01\x01\x18\x00\x00\x00\x00\x00"),  # 24:00
    msgpack.ExtType(EXT_DATETIME_UTC, b"\x07\xe4\x01\x01\x00\x3c\x00\x00\x00\x00"),  # :60
    msgpack.ExtType(EXT_DATETIME_UTC, b"\x07\xe4\x01\x01\x00\x00\x00\x0f\x42\x40"),  # 1e6 us
    msgpack.ExtType(EXT_DATETIME_UTC, b"\x07\xe4\x01\x20\x00\x00\x00\x00\x00\x00"),  # 32nd
    msgpack.ExtType(EXT_TIME, _time_payload(b"\x18\x00\x00\x00\x00\x00")),  # 24:00
    msgpack.ExtType(EXT_TIME, _time_payload(b"\x00\x00\x3c\x00\x00\x00")),  # second 60
]
POSSIBLE = {
    "2020-02-29": msgpack.ExtType(EXT_DATE, b"\x07\xe4\x02\x1d"),
    "23:59:59.999999": msgpack.ExtType(EXT_TIME, _time_payload(b"\x97\x3b\x3b\x0f\x42\x3f")),
    "2020-12-31 23:59:59.999999+00:00": msgpack.ExtType(
        EXT_DATETIME_UTC, b"\x07\xe4\x8c\x1f\x17\x3b\x3b\x0f\x42\x3f"  # fold 1
    ),
}


def test_dates_and_times_read_from_pickle_states_are_checked() -> None:
    # The C constructors copy a pickle state unchecked: day 0 would be a date.
    for ext in IMPOSSIBLE:
        for record in (with_state({"v": ext}), format_1({"v": ext})):
            with pytest.raises(CorruptSnapshotError):
                JsonSerializer().loads(record)
    for record in (with_state(dict(POSSIBLE)), format_1(dict(POSSIBLE))):
        loaded = JsonSerializer().loads(record).state
        assert {name: str(value) for name, value in loaded.items()} == {
            name: name for name in POSSIBLE
        }
        assert loaded["23:59:59.999999"].fold == 1


MODULUS = 2**61 - 1  # CPython hashes an int to itself modulo this


def colliding(count: int) -> list[int]:
    """Distinct ints that all hash alike."""
    return [1 + k * MODULUS for k in range(count)]


def test_a_stored_set_of_colliding_hashes_is_refused_at_once() -> None:
    items = [
        msgpack.ExtType(EXT_BIGINT_BYTES, n.to_bytes(n.bit_length() // 8 + 1, "big", signed=True))
        for n in colliding(20_000)
    ]
    records = {
        "previous format": format_1({"s": msgpack.ExtType(EXT_SET, msgpack.packb(items))}),
        "this format": with_state({"s": [msgpack.ExtType(MARK_SET, b""), *items]}),
    }
    for name, record in records.items():
        started = time.perf_counter()
        with pytest.raises(CorruptSnapshotError, match="hash"):
            JsonSerializer().loads(record)
        assert time.perf_counter() - started < 1.0, name


def test_a_set_whose_hashes_collide_is_refused_when_saving() -> None:
    with pytest.raises(SerializationError, match="share a hash") as info:
        JsonSerializer().dumps(WorkflowSnapshot("w", state={"s": set(colliding(2000))}))
    assert info.value.path == "state['s']"
    with pytest.raises(SerializationError) as info:
        JsonSerializer().dumps(WorkflowSnapshot("w", state={"s": [frozenset(colliding(2000))]}))
    assert info.value.path == "state['s'][0]"
    # The collisions chance makes are stored as usual: hash(-1) == hash(-2) in CPython.
    few = {-1, -2, *range(2, 100), *colliding(8)}
    assert stored(few).state["v"] == few


@dataclass(frozen=True)
class Tag:
    name: str


def test_a_set_of_stand_ins_is_read_in_linear_time() -> None:
    tags = {Tag(f"t{i}") for i in range(4000)}
    record = JsonSerializer(types=[Tag]).dumps(WorkflowSnapshot("w", state={"tags": tags}))
    started = time.perf_counter()
    loaded = JsonSerializer(unknown_classes="stand-in").loads(record).state["tags"]
    assert time.perf_counter() - started < 1.0
    assert len(loaded) == 4000
    assert {stand_in.fields["name"] for stand_in in loaded} == {tag.name for tag in tags}
    assert JsonSerializer(types=[Tag]).loads(record).state["tags"] == tags
    # Their hash is their content's: equal stand-ins still hash alike.
    a = UnresolvedObject("a:B", "dataclass", {"x": [1, {"y": 2}], "z": {3}})
    b = UnresolvedObject("a:B", "dataclass", {"z": frozenset({3}), "x": [1.0, {"y": 2}]})
    assert a == b
    assert hash(a) == hash(b)
