"""The environment of an in-process scoring command under test (scan, eval, calibrate)."""

from __future__ import annotations

import os

import pytest


def quick_scoring_env(mp: pytest.MonkeyPatch) -> None:
    """No inherited ``FAKESAKE_`` settings, and the torch backend in this process: no ONNX export and no engine
    processes to start for a few images."""
    for key in [k for k in os.environ if k.startswith("FAKESAKE_")]:
        mp.delenv(key)
    mp.setenv("FAKESAKE_MODEL__BACKEND", "torch")
    mp.setenv("FAKESAKE_BATCH__PROCESSES", "1")
