"""The scripts under examples/ run as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(script: str, cwd: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def test_approval_example(tmp_path: Path) -> None:
    out = _run("approval.py", tmp_path).splitlines()
    assert "interrupted, asking: Buy from ACME for 3749.70 EUR?" in out[0]
    assert out[1] == "stored at version 3, waiting at node 'manager_approval'"
    assert out[2].endswith("completed: ordered 3 x laptop, approved by maria")
    assert (tmp_path / "approval.db").exists()


@pytest.mark.parametrize("db_kind", ["postgresql"])
def test_approval_example_on_postgresql(tmp_path: Path, empty_database_url: object) -> None:
    url = empty_database_url.render_as_string(hide_password=False)  # type: ignore[attr-defined]
    out = _run("approval.py", tmp_path, "--url", url)
    assert "completed: ordered 3 x laptop, approved by maria" in out


def test_flaky_service_example(tmp_path: Path) -> None:
    out = _run("flaky_service.py", tmp_path)
    assert "failed: node 'charge' of run 'order-1017' failed (ConnectionError" in out
    assert "the node was called 3 times" in out
    assert '"status": "failed"' in out and '"charge": 3' in out  # what `show` printed
    assert "payment service unavailable (HTTP 503)" in out
    assert out.rstrip().endswith("resumed: completed, receipt charge-30-ok")
