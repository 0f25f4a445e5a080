"""Faults: a writer killed mid-write, racing resumes, a database restart, fuzzed input."""

from __future__ import annotations

import hashlib
import os
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from workflow_persistence import (
    ConflictError,
    DatabasePersistence,
    FilePersistence,
    JsonSerializer,
    Persistence,
    RunResult,
    StorageUnavailableError,
    WorkflowSnapshot,
)
from workflow_persistence._storage.file import _TEMP_PREFIX

from .test_workflow import race_two_resumes

ROOT = Path(__file__).resolve().parents[1]

# -- a writer killed at random moments ------------------------------------------------------

WRITER = """
import hashlib, sys
from workflow_persistence import FilePersistence, WorkflowSnapshot
store = FilePersistence(sys.argv[1])
seq = int(sys.argv[2])
while True:
    seq += 1
    blob = hashlib.sha256(str(seq).encode()).digest() * 32768  # 1 MiB
    store.save(WorkflowSnapshot("victim", state={"seq": seq, "blob": blob}))
    print(seq, flush=True)
"""


def _expected_blob(seq: int) -> bytes:
    return hashlib.sha256(str(seq).encode()).digest() * 32768


def test_kill_9_mid_write_never_leaves_a_torn_snapshot(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    rng = random.Random(20261124)  # noqa: S311 - kill timing, not secrets
    last_saved = 0
    for _ in range(50):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(directory), str(last_saved)],
            stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )
        assert writer.stdout is not None
        first = int(writer.stdout.readline())  # at least one save went through
        time.sleep(rng.uniform(0, 0.08))  # the fault itself: a kill at a random moment
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        confirmed = [first, *(int(line) for line in writer.stdout.read().split())]
        writer.stdout.close()
        snapshot = FilePersistence(directory).load("victim")
        seq = snapshot.state["seq"]
        assert snapshot.state["blob"] == _expected_blob(seq)  # whole, never torn
        # The stored snapshot is the last confirmed save or the one in flight after it.
        assert seq in (confirmed[-1], confirmed[-1] + 1)
        assert seq > last_saved
        last_saved = seq
        leftovers = [p for p in directory.iterdir() if p.name.startswith(_TEMP_PREFIX)]
        assert leftovers == []  # opening the store swept the killed writer's temp file
    assert len(list(directory.glob("*.wfp"))) == 1


# -- racing resumes -------------------------------------------------------------------------


def test_100_races_of_two_resumes(persistence_factory: Callable[..., Persistence]) -> None:
    store = persistence_factory(JsonSerializer())
    for race in range(100):
        outcomes, side_effects = race_two_resumes(store, f"race-{race}")
        winners = [o for o in outcomes if isinstance(o, RunResult)]
        losers = [o for o in outcomes if isinstance(o, ConflictError)]
        assert (len(winners), len(losers), side_effects) == (1, 1, 1), (race, outcomes)
        assert winners[0].status == "completed"
        assert not store.exists(f"race-{race}")


# -- a PostgreSQL restart under load ----------------------------------------------------------


def _restart_command() -> list[str]:
    command = os.environ.get("WFP_TEST_POSTGRESQL_RESTART")
    if command:
        return shlex.split(command)
    version = sorted(os.listdir("/etc/postgresql"))[0]
    return ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart", "-m", "fast"]


@pytest.mark.parametrize("db_kind", ["postgresql"])
def test_a_postgresql_restart_loses_nothing(engine: Engine) -> None:
    store = DatabasePersistence(engine)
    workers, per_worker = 3, 4
    confirmed: dict[str, int] = {}  # workflow id -> last version a save confirmed
    unexpected: list[BaseException] = []
    unavailable = threading.Event()
    stop = threading.Event()
    lock = threading.Lock()

    def work(worker: int) -> None:
        ids = [f"w{worker}-{n}" for n in range(per_worker)]
        while not stop.is_set():
            for wid in ids:
                try:
                    version = store.save(WorkflowSnapshot(wid, state={"id": wid, "pad": "x" * 512}))
                    with lock:
                        confirmed[wid] = version
                    assert store.load(wid).state["id"] == wid
                except StorageUnavailableError:
                    unavailable.set()
                except BaseException as exc:  # anything else is a failure of the test
                    unexpected.append(exc)
                    return

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    try:
        while len(confirmed) < workers * per_worker:  # every id saved at least once
            if unexpected:
                break
            time.sleep(0.01)
        before = dict(confirmed)
        subprocess.run(_restart_command(), check=True, capture_output=True, timeout=120)
        deadline = time.monotonic() + 60
        while True:  # service comes back by itself: new saves succeed again
            with lock:
                progressed = sum(confirmed[w] > before[w] for w in before)
            if progressed == len(before) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert unexpected == []
    assert unavailable.is_set(), "the restart was not noticed: did it happen?"
    assert progressed == len(before), "service did not resume after the restart"
    for wid, version in confirmed.items():  # nothing confirmed was lost or torn
        snapshot = store.load(wid)
        assert snapshot.version >= version
        assert snapshot.state == {"id": wid, "pad": "x" * 512}
    store.close()


# -- fuzzing --------------------------------------------------------------------------------


def test_fuzzed_records_only_raise_corrupt_snapshot_error(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris has wheels for Linux x86_64 only")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    from .samples import rich_snapshot, serializer

    (corpus / "rich").write_bytes(serializer().dumps(rich_snapshot()))
    (corpus / "plain").write_bytes(JsonSerializer().dumps(WorkflowSnapshot("w", state={"a": [1]})))
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fuzz_decoder.py"), "-runs=40000",
         "-max_len=4096", f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done 40000 runs" in result.stderr
