"""Peak memory of saving and loading a 64 MiB snapshot, on each backend.

Each phase runs in a fresh process. The kernel's peak-RSS counter is reset just before
the phase (``/proc/self/clear_refs``), so the figure counts every buffer the phase
needed, the drivers' C allocations included; the loaded snapshot itself counts too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _harness import bench_database, format_table

SNAPSHOT_MIB = 64

CHILD = r"""
import json, os, sys
sys.path.insert(0, {bench!r})
from workflow_persistence import (DatabasePersistence, FilePersistence, PayloadTooLargeError,
                                  WorkflowSnapshot)

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

kind, where, phase, payload = sys.argv[1:5]
store = FilePersistence(where) if kind == "file" else DatabasePersistence(where)
store.exists("warm-up")  # connections, table, statements: not part of the phase
mib = {mib}
if phase == "save":
    if payload == "document":  # an attachment: does not compress
        state = {{"document": os.urandom(mib << 20)}}
    else:  # text: compresses about sixfold
        state = {{"pages": [("page %06d " % i) * 745 for i in range(mib * 128)]}}
    snapshot = WorkflowSnapshot("big", state=state)
    raw_size = len(type(store.serializer)(compress_threshold=None).dumps(snapshot))
    size = [raw_size, len(store.serializer.dumps(snapshot))]
    reset_peak()
    before = status("VmRSS")
    try:
        store.save(snapshot)
        outcome = "saved"
    except PayloadTooLargeError as exc:
        outcome = "refused: " + str(exc).split(";")[0]
else:
    size = None
    reset_peak()
    before = status("VmRSS")
    loaded = store.load("big")
    outcome = "loaded " + ", ".join(loaded.state)
print(json.dumps({{"size": size, "extra": status("VmHWM") - before, "outcome": outcome}}))
"""


def _phase(kind: str, where: str, phase: str, payload: str) -> dict[str, Any]:
    code = CHILD.format(bench=str(Path(__file__).parent), mib=SNAPSHOT_MIB)
    result = subprocess.run(  # noqa: S603 - this Python, our own child code
        [sys.executable, "-c", code, kind, where, phase, payload],
        capture_output=True, text=True, check=False, timeout=600,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{kind} {phase} failed: {result.stderr[-2000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def run() -> str:
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as directory:
        for payload in ("document", "text"):
            for kind in ("file", "sqlite", "postgresql", "mariadb"):
                if kind == "file":
                    rows.append(_measure(kind, str(Path(directory) / payload), payload))
                    continue
                with bench_database(kind, Path(directory)) as db:
                    url = db.url.render_as_string(hide_password=False)
                    rows.append(_measure(kind, url, payload))
    return format_table(
        ["payload", "backend", "encoded / stored", "save: extra peak", "x size",
         "load: extra peak", "x size", "outcome"],
        rows,
    )


def _measure(kind: str, where: str, payload: str) -> list[object]:
    saved = _phase(kind, where, "save", payload)
    encoded, stored = saved["size"]
    sizes = f"{encoded / 2**20:.0f} / {stored / 2**20:.1f} MiB"
    save_cells = [f"{saved['extra'] / 2**20:.0f} MiB", f"{saved['extra'] / encoded:.2f}"]
    if not saved["outcome"].startswith("saved"):
        return [payload, kind, sizes, *save_cells, "-", "-", saved["outcome"][:60]]
    loaded = _phase(kind, where, "load", payload)
    return [
        payload, kind, sizes, *save_cells,
        f"{loaded['extra'] / 2**20:.0f} MiB", f"{loaded['extra'] / encoded:.2f}",
        f"{saved['outcome']}, {loaded['outcome']}",
    ]


def main() -> None:
    print(f"## Peak memory of a {SNAPSHOT_MIB} MiB snapshot (target: at most 3x its size)\n")
    print(run())


if __name__ == "__main__":
    main()
