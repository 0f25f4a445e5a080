"""Saves under contention: 2 processes x 4 threads, on PostgreSQL and MariaDB.

Every thread saves its own existing record (distinct ids, ~1 KiB snapshots) as fast as it
can for a fixed wall-clock window; the aggregate ops/s of all eight threads is compared
between the library (one ``DatabasePersistence`` per process, shared by its threads, as
an application would hold it) and the raw driver (``persistence.RawStore``: one
autocommit connection per thread, hand-written upsert, ``pickle`` for the snapshot; and
"raw bytes", the same with the library's encoded bytes and no serialization: the floor).

Fairness: the workers are started once ("spawn"), connect and warm up, then run the
contenders in alternating rounds (library, raw, raw bytes, then the reverse order, ...).
All eight threads and the coordinator meet at a ``multiprocessing.Barrier`` before every
round, so every round starts together; each thread stops at its own start + window.
A round's throughput is its total operations over its longest thread's elapsed time.
At the end every thread checks that the version its last save returned equals the number
of saves it made to that record: no save was lost or miscounted.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import statistics
import sys
import tempfile
import threading
import time
import traceback
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from _harness import QUICK, BenchDatabase, bench_database, format_table, sized_state, snapshot
from persistence import RawStore
from sqlalchemy.engine import make_url

from workflow_persistence import DatabasePersistence

KINDS = ["postgresql", "mariadb"]
PROCESSES = 2
THREADS = 4
WINDOW = 0.5 if QUICK else 3.0  # seconds per round
ROUNDS = 2 if QUICK else 4  # per contender
WARMUP = 20  # saves per thread and contender before the first round
CONTENDERS = ("library", "raw", "raw bytes")
SNAPSHOT_BYTES = 1024
TIMEOUT = 120.0  # seconds any worker may take to reach a barrier or report


def _log(message: str) -> None:
    print(f"[contention] {message}", file=sys.stderr, flush=True)


def schedule() -> list[str]:
    """Contender of each round: forward, then reversed order, alternating."""
    rounds: list[str] = []
    for number in range(ROUNDS):
        rounds.extend(CONTENDERS if number % 2 == 0 else CONTENDERS[::-1])
    return rounds


# -- in the worker processes --------------------------------------------------------------


def worker(
    kind: str, url: str, process: int, plan: list[str], window: float,
    start: Barrier, results: Queue[Any],
) -> None:
    """One process: ``THREADS`` threads sharing one DatabasePersistence."""
    persistence = DatabasePersistence(url, create_table=False)
    state = sized_state(SNAPSHOT_BYTES)
    threads = [
        threading.Thread(
            target=_thread_main,
            args=(kind, url, persistence, state, process, number, plan, window, start, results),
            name=f"saver-{process}-{number}",
        )
        for number in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    persistence.close()


def _thread_main(
    kind: str, url: str, persistence: DatabasePersistence, state: dict[str, Any],
    process: int, number: int, plan: list[str], window: float,
    start: Barrier, results: Queue[Any],
) -> None:
    raw: RawStore | None = None
    try:
        raw = RawStore(BenchDatabase(kind, make_url(url), lambda: None))
        suffix = f"{process}-{number}"
        library_snap = snapshot(f"library-{suffix}", state)
        raw_snap = snapshot(f"raw-{suffix}", state)
        bytes_id = f"bytes-{suffix}"
        encoded = persistence.serializer.dumps(snapshot(bytes_id, state))
        store = raw
        ops: dict[str, Callable[[], int]] = {
            "library": lambda: persistence.save(library_snap),
            "raw": lambda: store.save(raw_snap.workflow_id, pickle.dumps(raw_snap, protocol=5)),
            "raw bytes": lambda: store.save(bytes_id, encoded),
        }
        saves = dict.fromkeys(CONTENDERS, 0)
        last = dict.fromkeys(CONTENDERS, 0)
        for name, op in ops.items():  # creates each record, connects, compiles
            for _ in range(WARMUP):
                last[name] = op()
                saves[name] += 1
        clock = time.perf_counter
        for round_number, name in enumerate(plan):
            op = ops[name]
            latencies = array("d")
            count = 0
            version = 0
            start.wait(TIMEOUT)
            cpu = time.process_time()  # this process, all its threads
            began = now = clock()
            deadline = began + window
            while now < deadline:
                before = now
                version = op()
                now = clock()
                latencies.append(now - before)
                count += 1
            cpu = time.process_time() - cpu if number == 0 else 0.0  # one per process
            results.put(("round", round_number, name, process, number, count, now - began,
                         latencies, cpu))
            saves[name] += count
            last[name] = version
        wrong = [
            f"{name}: last save returned version {last[name]} after {saves[name]} saves"
            for name in CONTENDERS if last[name] != saves[name]
        ]
        results.put(("done", process, number, "; ".join(wrong)))
    except BaseException:
        start.abort()
        results.put(("error", process, number, traceback.format_exc()))
    finally:
        if raw is not None:
            raw.close()


# -- in the coordinating process ------------------------------------------------------------


@dataclass
class Round:
    contender: str
    ops: int
    seconds: float  # the longest thread's elapsed time
    cpu: float  # CPU seconds of the worker processes (all their threads)

    @property
    def rate(self) -> float:
        return self.ops / self.seconds


@dataclass
class KindResult:
    kind: str
    rounds: list[Round]
    latencies: dict[str, list[float]]
    checks: list[str]

    def rate(self, contender: str) -> float:
        mine = [r for r in self.rounds if r.contender == contender]
        return sum(r.ops for r in mine) / sum(r.seconds for r in mine)

    def cpu_per_op(self, contender: str) -> float:
        mine = [r for r in self.rounds if r.contender == contender]
        return sum(r.cpu for r in mine) / sum(r.ops for r in mine)

    def rates(self, contender: str) -> list[float]:
        return [r.rate for r in self.rounds if r.contender == contender]

    def latency(self, contender: str) -> str:
        ordered = sorted(self.latencies[contender])
        p50 = statistics.median(ordered) * 1e6
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6
        return f"{p50:,.0f} / {p99:,.0f}"


def bench_kind(kind: str, directory: Path) -> KindResult:
    with bench_database(kind, directory) as db:
        with DatabasePersistence(db.url) as setup:
            setup.exists("warm-up")  # creates the table through the migrations
        url = db.url.render_as_string(hide_password=False)
        plan = schedule()
        context = multiprocessing.get_context("spawn")
        start = context.Barrier(PROCESSES * THREADS + 1)
        results: Queue[Any] = context.Queue()
        processes = [
            context.Process(
                target=worker, args=(kind, url, number, plan, WINDOW, start, results),
                name=f"contention-{kind}-{number}",
            )
            for number in range(PROCESSES)
        ]
        for process in processes:
            process.start()
        try:
            return _coordinate(kind, plan, start, results)
        finally:
            for process in processes:
                process.join(TIMEOUT)
                if process.is_alive():  # only after a failure: never leave one behind
                    process.terminate()
                    process.join()


def _coordinate(kind: str, plan: list[str], start: Barrier, results: Queue[Any]) -> KindResult:
    workers = PROCESSES * THREADS
    messages: list[tuple[Any, ...]] = []
    try:
        for round_number, name in enumerate(plan):
            start.wait(TIMEOUT)
            _log(f"{kind}: round {round_number + 1}/{len(plan)}: {name}")
        while len(messages) < workers * (len(plan) + 1):
            message = results.get(timeout=TIMEOUT)
            if message[0] == "error":
                raise RuntimeError(f"worker {message[1]}.{message[2]} failed:\n{message[3]}")
            messages.append(message)
    except (threading.BrokenBarrierError, queue.Empty) as exc:
        errors = []
        while True:
            try:
                message = results.get(timeout=1)
            except queue.Empty:
                break
            if message[0] == "error":
                errors.append(f"worker {message[1]}.{message[2]}:\n{message[3]}")
        raise RuntimeError(
            f"{kind}: the workers did not finish ({exc!r})\n" + "\n".join(errors)
        ) from exc
    per_round: dict[int, list[tuple[Any, ...]]] = {}
    latencies: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    checks = []
    for message in messages:
        if message[0] == "round":
            per_round.setdefault(message[1], []).append(message)
            latencies[message[2]].extend(message[7])
        elif message[3]:
            checks.append(f"worker {message[1]}.{message[2]}: {message[3]}")
    rounds = []
    for round_number, name in enumerate(plan):
        reports = per_round[round_number]
        assert len(reports) == workers
        assert all(r[2] == name for r in reports)
        rounds.append(Round(
            name, sum(r[5] for r in reports), max(r[6] for r in reports),
            sum(r[8] for r in reports),
        ))
    return KindResult(kind, rounds, latencies, checks)


def report(results: Sequence[KindResult]) -> str:
    headers = [
        "database", "library ops/s", "raw ops/s", "raw bytes ops/s", "library/raw",
        "library/raw bytes", "library p50 / p99 µs", "raw p50 / p99 µs",
        "raw bytes p50 / p99 µs", "client CPU µs/save (lib / raw / bytes)", "versions",
    ]
    rows = []
    for r in results:
        lib, raw, floor = r.rate("library"), r.rate("raw"), r.rate("raw bytes")
        rows.append([
            r.kind, f"{lib:,.0f}", f"{raw:,.0f}", f"{floor:,.0f}", f"{lib / raw:.2f}x",
            f"{lib / floor:.2f}x", r.latency("library"), r.latency("raw"),
            r.latency("raw bytes"),
            " / ".join(f"{r.cpu_per_op(name) * 1e6:,.0f}" for name in CONTENDERS),
            "all exact" if not r.checks else "MISMATCH",
        ])
    spread_rows = [
        [r.kind, name, ", ".join(f"{rate:,.0f}" for rate in r.rates(name))]
        for r in results for name in CONTENDERS
    ]
    mode = " (QUICK mode)" if QUICK else ""
    lines = [
        f"## Saves under contention{mode}: {PROCESSES} processes x {THREADS} threads,"
        f" distinct ids, ~{SNAPSHOT_BYTES} B snapshots, {os.cpu_count()} CPUs",
        "",
        format_table(headers, rows),
        "",
        f"Aggregate throughput of all {PROCESSES * THREADS} threads: {ROUNDS} rounds of"
        f" {WINDOW:g} s per contender, alternating; each thread saves its own existing record."
        " Latencies are per save, over all threads and rounds; client CPU is the worker"
        " processes' CPU time (all threads, as measured from one thread's window) per save.",
        "",
        format_table(["database", "contender", "ops/s in each round"], spread_rows),
    ]
    for r in results:
        lines += [f"\n{r.kind}: {check}" for check in r.checks]
    return "\n".join(lines)


def run(kinds: list[str] | None = None) -> str:
    """Raises AssertionError (with the report) if a thread's versions do not add up."""
    results = []
    with tempfile.TemporaryDirectory() as directory:
        for kind in kinds or KINDS:
            results.append(bench_kind(kind, Path(directory)))
    text = report(results)
    if any(r.checks for r in results):
        raise AssertionError(text)
    return text


def main(argv: list[str] | None = None) -> None:
    kinds = sys.argv[1:] if argv is None else argv
    try:
        print(run(kinds or None))
    except AssertionError as failed:
        print(failed)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
