"""``python -m bench --help`` works (the suite itself is not part of the tests: it measures, it does not assert)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_help_runs_without_importing_torch() -> None:
    code = (
        "import sys, runpy\n"
        "sys.argv = ['bench', '--help']\n"
        "try:\n"
        "    runpy.run_module('bench', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "assert 'torch' not in sys.modules, 'bench --help imported torch'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for option in ("--quick", "--only", "--out", "--device"):
        assert option in proc.stdout
