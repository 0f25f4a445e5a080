"""The built distribution: a wheel installed in a fresh virtualenv works on its own.

Builds the sdist and, from it, the wheel (as ``python -m build`` does), installs the wheel
into a new venv (its dependencies from pip's configured index) and runs the package there,
far from the source checkout: every public name imports, the migrations are found inside
site-packages, and both ``migrations.upgrade`` and the ``workflow-persistence`` command
create the table.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .hostapp.support import REPO_ROOT, run

pytestmark = pytest.mark.slow

REVISION_FILES = [
    "wfp_0001_create_workflow_interrupts.py",
    "wfp_0002_queryable_columns.py",
    "wfp_0003_interrupt_deadline.py",
]
REVISION_FILE = REVISION_FILES[0]
HEAD = "wfp_0003"
TABLE = "workflow_interrupts"
VERSION_TABLE = "workflow_persistence_alembic_version"

#: Every name API.md shows, which section 8 promises at the top level (errors too).
PUBLIC_NAMES = [
    # 1. snapshots
    "WorkflowSnapshot", "Decision", "ErrorInfo", "Event",
    # 2. persistence
    "Persistence", "InMemoryPersistence", "FilePersistence", "DatabasePersistence",
    "StoredSnapshotInfo",
    # 3. table, model, repository
    "WorkflowInterrupt", "WorkflowInterruptMixin", "WorkflowInterruptRepository", "metadata",
    # 4. serialization
    "Serializer", "JsonSerializer", "PickleSerializer",
    # 5. errors
    "PersistenceError", "WorkflowNotFoundError", "InvalidWorkflowIdError",
    "SerializationError", "CorruptSnapshotError", "ConflictError", "PayloadTooLargeError",
    "StorageUnavailableError", "WorkflowError", "WorkflowDefinitionError",
    "WorkflowFailedError",
    # 6. runtime
    "Workflow", "StartEvent", "StopEvent", "WorkflowState", "interrupt", "RunResult",
    "RetryPolicy",
    # 7. migrations
    "migrations",
]

PROBE = r'''
import json, sys, sysconfig
from pathlib import Path

names = json.loads(sys.argv[1])
db_file = sys.argv[2]
facts = {}

import workflow_persistence
from workflow_persistence import migrations

facts["package_file"] = workflow_persistence.__file__
facts["purelib"] = sysconfig.get_paths()["purelib"]
missing = []
for name in names:
    try:
        exec(f"from workflow_persistence import {name}", {})
    except ImportError:
        missing.append(name)
facts["missing"] = missing
facts["all_resolves"] = [n for n in workflow_persistence.__all__
                         if not hasattr(workflow_persistence, n)]
facts["script_location"] = str(migrations.script_location())
facts["versions_dir"] = migrations.versions_dir()
facts["revision_files"] = sorted(
    p.name for p in Path(migrations.versions_dir()).iterdir() if p.suffix == ".py"
)
facts["env_py"] = (migrations.script_location() / "env.py").is_file()

migrations.upgrade(f"sqlite:///{db_file}")

# A host app's Alembic: the packaged versions as a package:path entry.
from alembic.config import Config
from alembic.script import ScriptDirectory

def heads(separator):
    config = Config()
    config.set_main_option("script_location", str(migrations.script_location()))
    config.set_main_option("path_separator", separator)
    config.set_main_option("version_locations", "workflow_persistence:_migrations/versions")
    return ScriptDirectory.from_config(config).get_heads()

facts["heads_newline"] = heads("newline")
facts["heads_os"] = heads("os")  # the pitfall: cut at the colon, nothing found
print(json.dumps(facts))
'''


@dataclass
class Installed:
    root: Path
    wheel: Path
    sdist: Path
    python: Path
    bin: Path


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("build")
    dist = root / "dist"
    run([sys.executable, "-m", "build", "--outdir", dist, REPO_ROOT], cwd=root)
    (wheel,) = dist.glob("workflow_persistence-*.whl")
    (sdist,) = dist.glob("workflow_persistence-*.tar.gz")
    venv = root / "venv"
    run([sys.executable, "-m", "venv", venv], cwd=root)
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "--no-input", "--quiet", wheel], cwd=root)
    return Installed(root=root, wheel=wheel, sdist=sdist, python=python, bin=venv / "bin")


def tables(db_file: Path) -> set[str]:
    with sqlite3.connect(db_file) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {str(name) for (name,) in rows}


def test_the_wheel_holds_the_package_its_types_and_the_migrations(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
    assert "workflow_persistence/py.typed" in names
    assert "workflow_persistence/__init__.py" in names
    assert "workflow_persistence/_migrations/env.py" in names
    assert "workflow_persistence/_migrations/script.py.mako" in names
    assert f"workflow_persistence/_migrations/versions/{REVISION_FILE}" in names
    # The inbox's pages need nothing from the network: templates and CSS are in the wheel.
    inbox = "workflow_persistence/inbox/"
    assert {f"{inbox}static/inbox.css", f"{inbox}templates/run.html",
            f"{inbox}templates/list.html", f"{inbox}templates/base.html"} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith(("tests/", "src/", "migrations/"))]
    # The sdist the wheel was built from carries the root environment too.
    with tarfile.open(installed.sdist) as sdist:
        members = {m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name}
    assert {"alembic.ini", "migrations/env.py", f"migrations/versions/{REVISION_FILE}"} <= members


def test_the_installed_package_works_from_site_packages(
    installed: Installed, tmp_path: Path
) -> None:
    db_file = tmp_path / "upgraded.db"
    done = run(
        [installed.python, "-c", PROBE, json.dumps(PUBLIC_NAMES), str(db_file)],
        cwd=tmp_path,
    )
    facts: dict[str, Any] = json.loads(done.stdout)
    purelib = Path(facts["purelib"])
    assert Path(facts["package_file"]).is_relative_to(purelib)  # not the checkout
    assert facts["missing"] == []
    assert facts["all_resolves"] == []
    assert Path(facts["script_location"]) == purelib / "workflow_persistence" / "_migrations"
    assert Path(facts["versions_dir"]).is_relative_to(purelib)
    assert facts["revision_files"] == REVISION_FILES
    assert facts["env_py"] is True
    assert tables(db_file) == {TABLE, VERSION_TABLE}
    assert facts["heads_newline"] == [HEAD]
    assert facts["heads_os"] == []


def test_the_console_script_migrates(installed: Installed, tmp_path: Path) -> None:
    db_file = tmp_path / "cli.db"
    command: list[str | Path] = [
        installed.bin / "workflow-persistence", "migrate", "--url", f"sqlite:///{db_file}"
    ]
    first = run(command, cwd=tmp_path)
    assert TABLE in first.stdout
    assert tables(db_file) == {TABLE, VERSION_TABLE}
    run(command, cwd=tmp_path)  # migrate can run twice
    with sqlite3.connect(db_file) as connection:
        assert connection.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchall() == [
            (HEAD,)
        ]
