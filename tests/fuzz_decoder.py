"""Coverage-guided fuzzing of the snapshot decoders (atheris/libFuzzer).

    python tests/fuzz_decoder.py -runs=50000 -max_len=65536

Any exception other than CorruptSnapshotError, or a crash, is a finding: libFuzzer
stops with a non-zero exit status and writes the input that caused it.

Besides libFuzzer's own byte mutations, the mutator nests what it is given deeper
(arrays, maps, the marked arrays of tuples and objects, and the ext-within-ext payloads of
the previous format), and changes how many items arrays and maps claim: depth and counts
are where decoding could exhaust the stack or memory. It starts from real records.
"""

from __future__ import annotations

import random
import sys

import atheris

with atheris.instrument_imports():
    import msgpack

    from workflow_persistence import (
        CorruptSnapshotError,
        JsonSerializer,
        PickleSerializer,
        WorkflowSnapshot,
    )
    from workflow_persistence._serialization.framing import crc_detail, frame

STRICT = JsonSerializer()
STAND_IN = JsonSerializer(unknown_classes="stand-in")
SHALLOW = JsonSerializer(max_depth=3)
PICKLE = PickleSerializer(secret_key=b"fuzzing-key-0123456789")

SEEDS = [
    JsonSerializer(compress_threshold=None).dumps(WorkflowSnapshot(
        "w", state={"t": (1, (2, [3, {4}])), "d": {"k": [None, b"x", 1.5]}, "s": {"a", "b"}}
    )).partition(b"\n")[2],
    msgpack.packb([1, "w", "interrupted", {"v": msgpack.ExtType(1, msgpack.packb([(1, 2)]))},
                   None, None, [], None, [], {}, None, {}, None, None, 0]),
]
# Each wraps the object that follows it: an array, a map under a nil key, a tuple's marked
# array, a stand-in's.
WRAPPERS = [b"\x91", b"\x81\xc0", b"\x92\xc7\x00\x20", b"\x94\xc7\x00\x23\xa3x:Y\xa5state"]
LEVELS = [1, 2, 50, 99, 100, 101, 102, 1021, 1022, 1023, 1024, 1025, 3000]


def nest_deeper(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.choice(WRAPPERS) * rng.choice(LEVELS) + data[at:]


def nest_ext(data: bytes, rng: random.Random) -> bytes:
    """``data`` as the payload of ext values within ext values, as the previous format."""
    for _ in range(rng.choice([1, 2, 50, 101, 200])):
        data = msgpack.packb(msgpack.ExtType(rng.choice([1, 2, 3, 12]), b"\x91" + data))
    return bytes(data)


def recount(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    headers = [i for i, b in enumerate(out) if 0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF]
    if not headers:
        return data
    at = rng.choice(headers)
    kind = out[at]
    if kind <= 0x9F:
        out[at] = (kind & 0xF0) | rng.randrange(16)
    elif kind in (0xDC, 0xDE) and at + 3 <= len(out):
        out[at + 1 : at + 3] = rng.randrange(1 << 16).to_bytes(2, "big")
    elif at + 5 <= len(out):
        count = rng.choice([0, 1, 1 << 16, 1 << 20, 1 << 31, (1 << 32) - 1])
        out[at + 1 : at + 5] = count.to_bytes(4, "big")
    return bytes(out)


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)  # noqa: S311 - mutations, not secrets
    if not data or rng.random() < 0.05:
        data = rng.choice(SEEDS)
    choice = rng.random()
    if choice < 0.5:
        mutated = bytes(atheris.Mutate(data, max_size))
    elif choice < 0.7:
        mutated = nest_deeper(data, rng)
    elif choice < 0.8:
        mutated = nest_ext(data, rng)
    else:
        mutated = recount(data, rng)
    return mutated[:max_size]


def test_one_input(data: bytes) -> None:
    # As stored (header and CRC checked), and re-framed with a valid CRC, so the
    # decoder beneath the checksum is fuzzed as well.
    for record in (data, frame(b"msgpack", crc_detail(data), data)):
        for serializer in (STRICT, STAND_IN, SHALLOW, PICKLE):
            try:
                snapshot = serializer.loads(record)
            except CorruptSnapshotError:
                continue
            if not isinstance(snapshot, WorkflowSnapshot):
                raise AssertionError(f"loads returned {type(snapshot)!r}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input, custom_mutator=mutate)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
