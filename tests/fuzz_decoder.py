"""Coverage-guided fuzzing of the snapshot decoders (atheris/libFuzzer).

    python tests/fuzz_decoder.py -runs=50000 -max_len=8192

Any exception other than CorruptSnapshotError, or a crash, is a finding: libFuzzer
stops with a non-zero exit status and writes the input that caused it.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from workflow_persistence import (
        CorruptSnapshotError,
        JsonSerializer,
        PickleSerializer,
        WorkflowSnapshot,
    )
    from workflow_persistence._framing import crc_detail, frame

STRICT = JsonSerializer()
STAND_IN = JsonSerializer(unknown_classes="stand-in")
PICKLE = PickleSerializer(secret_key=b"fuzzing-key-0123456789")


def test_one_input(data: bytes) -> None:
    # As stored (header and CRC checked), and re-framed with a valid CRC, so the
    # decoder beneath the checksum is fuzzed as well.
    for record in (data, frame(b"msgpack", crc_detail(data), data)):
        for serializer in (STRICT, STAND_IN, PICKLE):
            try:
                snapshot = serializer.loads(record)
            except CorruptSnapshotError:
                continue
            if not isinstance(snapshot, WorkflowSnapshot):
                raise AssertionError(f"loads returned {type(snapshot)!r}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
