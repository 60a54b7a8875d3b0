"""The tree passes `ruff check` with the project's configuration (pyproject's [tool.ruff]):
import order (one import a line), unused names, shadowed builtins. Skipped where ruff is
not installed (it comes with the dev and lint extras)."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed (extra: lint)")
def test_ruff_check_is_clean():
    r = subprocess.run(["ruff", "check", "--no-cache", "."], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
