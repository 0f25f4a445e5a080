"""The default serializer against pickle, and what compression buys.

1. dumps + loads of the same snapshot: JsonSerializer vs pickle (protocol 5).
2. zlib vs zstd on realistic encoded bodies: ratio and speed.
3. Whether compression pays where snapshots go: save + load of a 1 MiB snapshot with
   compression on and off, on a SQLite file and on PostgreSQL over loopback.
"""

from __future__ import annotations

import pickle
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from _harness import (
    QUICK,
    bench_database,
    format_table,
    interleaved,
    realistic_state,
    sized_state,
    snapshot,
)

from workflow_persistence import DatabasePersistence, JsonSerializer


def _pair_stats(
    ours: Callable[[], object], theirs: Callable[[], object], operations: int
) -> tuple[float, float]:
    stats = interleaved({"ours": ours, "pickle": theirs}, operations=operations, rounds=20)
    return stats["ours"].p50_us, stats["pickle"].p50_us


def versus_pickle() -> str:
    rows: list[list[object]] = []
    cases = [
        ("realistic state (50 keys, 20 messages)", realistic_state(), 20000),
        ("1 MiB state", sized_state(1 << 20), 150),
    ]
    for label, state, operations in cases:
        snap = snapshot("bench", state)
        plain_size = len(JsonSerializer(compress_threshold=None).dumps(snap))
        for compression in (None, 1 << 20):
            if compression is not None and plain_size < compression:
                continue
            serializer = JsonSerializer(compress_threshold=compression)
            encoded = serializer.dumps(snap)
            pickled = pickle.dumps(snap, protocol=5)
            assert serializer.loads(encoded).state == state
            ours, theirs = _pair_stats(
                partial(_round_trip, serializer, snap),
                partial(_pickle_round_trip, snap),
                operations,
            )
            rows.append([
                label, "on" if compression else "off", f"{len(encoded):,}", f"{len(pickled):,}",
                f"{ours:,.1f}", f"{theirs:,.1f}", f"{ours / theirs:.2f}x",
            ])
    return format_table(
        ["snapshot", "compression", "our bytes", "pickle bytes", "ours dumps+loads p50 µs",
         "pickle p50 µs", "ours/pickle time"],
        rows,
    )


def _round_trip(serializer: JsonSerializer, snap: Any) -> object:
    return serializer.loads(serializer.dumps(snap))


def _pickle_round_trip(snap: Any) -> object:
    return pickle.loads(pickle.dumps(snap, protocol=5))


def compression_options() -> str:
    import zstandard  # the bench extra installs it

    rows: list[list[object]] = []
    serializer = JsonSerializer(compress_threshold=None)
    for label, size in (("64 KiB", 64 << 10), ("1 MiB", 1 << 20)):
        body = serializer.dumps(snapshot("bench", sized_state(size)))
        codecs: list[tuple[str, Callable[[bytes], bytes], Callable[[bytes], bytes]]] = [
            ("zlib 1", partial(zlib.compress, level=1), zlib.decompress),
            ("zlib 6", partial(zlib.compress, level=6), zlib.decompress),
        ]
        for level in (1, 3):
            codecs.append((
                f"zstd {level}",
                zstandard.ZstdCompressor(level=level).compress,
                zstandard.ZstdDecompressor().decompress,
            ))
        for name, compress, decompress in codecs:
            packed = compress(body)
            repeat = 5 if QUICK else 30
            c = _best(partial(compress, body), repeat)
            d = _best(partial(decompress, packed), repeat)
            rows.append([
                label, name, f"{len(body) / len(packed):.2f}", f"{len(body) / c / 1e6:,.0f}",
                f"{len(body) / d / 1e6:,.0f}",
            ])
    return format_table(["body", "codec", "ratio", "compress MB/s", "decompress MB/s"], rows)


def _best(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def does_compression_pay() -> str:
    rows: list[list[object]] = []
    snap = snapshot("bench", sized_state(1 << 20))
    with tempfile.TemporaryDirectory() as directory:
        for kind in ("sqlite", "postgresql"):
            with bench_database(kind, Path(directory)) as db:
                stores = {
                    name: DatabasePersistence(
                        db.url, serializer=JsonSerializer(compress_threshold=threshold)
                    )
                    for name, threshold in (("off", None), ("on", 1 << 20))
                }
                for name, store in stores.items():
                    snap.workflow_id = f"pays-{name}"
                    store.save(snap)

                def round_trip(name: str, store: Any) -> Callable[[], object]:
                    def run() -> object:
                        snap.workflow_id = f"pays-{name}"
                        store.save(snap)
                        return store.load(f"pays-{name}")

                    return run

                stats = interleaved(
                    {name: round_trip(name, store) for name, store in stores.items()},
                    operations=80,
                )
                for name, store in stores.items():
                    stored = len(store.serializer.dumps(snap))
                    rows.append([
                        kind, name, f"{stored:,}", f"{stats[name].p50_us / 1000:,.1f}",
                        f"{stats[name].ops:,.1f}",
                    ])
                    store.close()
    return format_table(
        ["database", "compression", "stored bytes", "save+load p50 ms", "ops/s"], rows
    )


def run() -> str:
    return "\n\n".join([
        "### dumps + loads: the default serializer vs pickle\n\n" + versus_pickle(),
        "### zlib vs zstd on encoded snapshots\n\n" + compression_options(),
        "### Does compression pay? save + load of a 1 MiB snapshot\n\n" + does_compression_pay(),
    ])


def main() -> None:
    print("## Serialization\n")
    print(run())


if __name__ == "__main__":
    main()
    sys.exit(0)
