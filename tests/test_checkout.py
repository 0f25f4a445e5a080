"""What a newcomer's clone gives: no stray binaries, and a ``make demo`` that installs only
the runtime (the dev extra is ``make test``'s, in the same venv, installed once)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

import workflow_persistence
from workflow_persistence.migrations import URL_ENV_VAR

from .test_cli import check_the_hint_works

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Larger than any source file here; a wheel, an archive or a database would exceed it.
MAX_TRACKED_BYTES = 256 * 1024
#: What the dev extra brings and the demo does not need.
DEV_ONLY = {"pytest", "mypy", "ruff", "hypothesis", "psycopg", "pymysql", "zstandard"}


def tracked_files() -> list[Path]:
    """The files git tracks (an sdist has no git metadata: then there is nothing to check)."""
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True, timeout=60
    ).stdout.decode()
    return [REPO_ROOT / name for name in listed.split("\0") if name]


def test_no_wheel_and_no_large_file_is_tracked() -> None:
    tracked = tracked_files()
    assert [p.name for p in tracked if p.name.endswith(".whl")] == []
    too_large = {
        str(p.relative_to(REPO_ROOT)): p.stat().st_size
        for p in tracked
        if p.is_file() and p.stat().st_size > MAX_TRACKED_BYTES
    }
    assert too_large == {}
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", "msgpack-1.0-py3-none-any.whl"],
        cwd=REPO_ROOT, timeout=60, check=False,
    )
    assert ignored.returncode == 0, "*.whl is not in .gitignore"


# -- the Makefile, with every program it runs replaced by one that logs its arguments ----------

FAKE_PROGRAM = """#!/bin/sh
echo "$(basename "$0") $*" >> {log}
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
    mkdir -p "$3/bin"
    for program in python workflow-persistence ruff mypy pytest; do
        cp "$0" "$3/bin/$program"
    done
fi
"""


class LoggedMake:
    """``make TARGET`` on this repository's Makefile with a venv of logging stand-ins."""

    def __init__(self, tmp_path: Path) -> None:
        self.log = tmp_path / "make.log"
        self.python = tmp_path / "python3"
        self.python.write_text(FAKE_PROGRAM.format(log=shlex.quote(str(self.log))))
        self.python.chmod(0o755)
        self.venv = tmp_path / "venv"

    def __call__(self, *targets: str) -> list[str]:
        """Run the targets; return the programs they ran, one line each."""
        self.log.write_text("")
        done = subprocess.run(
            ["make", "--no-print-directory", *targets, f"PYTHON={self.python}",
             f"VENV={self.venv}"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
        )
        assert done.returncode == 0, done.stderr
        return self.log.read_text().splitlines()


def pip_installs(ran: list[str]) -> list[list[str]]:
    """What each ``pip install`` installed (its last argument)."""
    return [shlex.split(line)[-1:] for line in ran if " pip " in f" {line} " and "install" in line]


def test_make_demo_installs_the_runtime_only_and_make_test_adds_the_dev_extra(
    tmp_path: Path,
) -> None:
    make = LoggedMake(tmp_path)

    ran = make("demo")
    assert ran[0].startswith("python3 -m venv ")
    assert pip_installs(ran) == [["."]]  # the package alone: no extra
    assert ran[-1] == "workflow-persistence demo"

    assert make("demo") == ["workflow-persistence demo"]  # nothing installed again

    ran = make("lint", "typecheck")  # what `make test` needs first, before the databases
    assert not any("-m venv" in line for line in ran)  # the same venv
    assert pip_installs(ran) == [[".[dev]"]]
    assert [line.split()[0] for line in ran[1:]] == ["ruff", "mypy"]

    # The dev install holds the runtime: the demo does not install anything after it.
    assert make("demo") == ["workflow-persistence demo"]
    assert make("lint") == ["ruff check src tests migrations examples bench"]


# -- the real thing, on a copy of the checkout ------------------------------------------------


def copy_of_the_checkout(destination: Path) -> Path:
    """The tracked files as they are now (a clone without the .git directory)."""
    for source in tracked_files():
        if source.is_file():
            target = destination / source.relative_to(REPO_ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def newcomer_environment() -> dict[str, str]:
    """This environment without what points Python at this checkout or at a database."""
    hidden = {"PYTHONPATH", "VIRTUAL_ENV", URL_ENV_VAR, "MAKEFLAGS", "MAKELEVEL"}
    return {k: v for k, v in os.environ.items() if k not in hidden}


@pytest.mark.slow
def test_make_demo_on_a_fresh_checkout(tmp_path: Path) -> None:
    clone = copy_of_the_checkout(tmp_path / "clone")
    env = newcomer_environment()
    done = subprocess.run(
        ["make", "demo"], cwd=clone, env=env, capture_output=True, text=True, timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "5. A second refund waits for its answer" in done.stdout

    python = clone / ".venv" / "bin" / "python"
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=json"], env=env, capture_output=True, text=True,
        timeout=120, check=True,
    )
    installed = {d["name"].lower() for d in json.loads(listed.stdout)}
    assert {"workflow-persistence", "sqlalchemy", "alembic", "msgpack"} <= installed
    assert installed & DEV_ONLY == set()

    check_the_hint_works(done.stdout, clone, env)

    # A database the runtime has no driver for says which extra to install.
    driverless = subprocess.run(
        [clone / ".venv" / "bin" / "workflow-persistence", "list", "--url",
         "postgresql://postgres@127.0.0.1:5432/postgres"],
        cwd=clone, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert driverless.returncode == 1
    assert "pip install 'workflow-persistence[postgresql]'" in driverless.stderr


def test_no_module_cites_a_page_users_never_see() -> None:
    package = Path(workflow_persistence.__file__).parent
    citing = sorted(
        str(p.relative_to(package)) for p in package.rglob("*.py") if "API.md" in p.read_text()
    )
    assert citing == []
