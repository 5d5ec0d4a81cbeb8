"""Every ``python -m bench`` section runs in smoke mode (``--smoke``: the fewest items, one pass) and reports
well-formed rows.

The bench measures and asserts nothing about speed, so a section that stops running (an import, a renamed
attribute, a changed return shape) went unnoticed until someone ran it; this catches that. The figures of a smoke
run mean nothing and are not checked, only the shape of the rows. One context serves the module, as in
``python -m bench``: the sections share its seeded weights, images and servers (queue and latency share one real
worker), and its exit stack stops what they started.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator

import pytest

from bench.__main__ import SECTION_NAMES, _sections
from bench.common import Context, Row, markdown


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Context]:
    with pytest.MonkeyPatch.context() as env:
        for key in [k for k in os.environ if k.startswith("FAKESAKE_")]:  # the bench measures the code's defaults
            env.delenv(key)
        context = Context(quick=True, device="cpu", workdir=tmp_path_factory.mktemp("bench"), smoke=True)
        with context.stack:
            yield context


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_row(row: Row, section: str) -> None:
    """What the report needs of a row: where it belongs, what it measured, and what it is compared with."""
    assert isinstance(row, Row), row
    assert row.section == section, row
    assert isinstance(row.name, str) and row.name and row.name != "FAILED", row
    assert row.value is None or _is_number(row.value), row
    assert isinstance(row.unit, str), row
    assert row.value is None or row.unit, f"a figure needs a unit: {row}"
    assert row.value is not None or row.note, f"a row without a figure says why: {row}"
    if row.baseline_name or row.baseline is not None or row.ratio is not None:
        assert _is_number(row.baseline) and row.baseline_name, f"a comparison needs its baseline: {row}"
    assert row.ratio is None or _is_number(row.ratio), row
    assert row.ok is None or isinstance(row.ok, bool), row
    assert row.ok is None or row.target, f"a pass/fail needs its target: {row}"
    assert isinstance(row.target, str) and isinstance(row.note, str), row
    json.dumps(dataclasses.asdict(row), allow_nan=False)  # what latest.json gets


def test_every_registered_section_is_tested() -> None:
    assert list(_sections()) == list(SECTION_NAMES)


@pytest.mark.parametrize("section", SECTION_NAMES)
def test_section_runs_and_reports_well_formed_rows(ctx: Context, section: str) -> None:
    rows = _sections()[section](ctx)
    assert rows, f"{section} reported no rows"
    for row in rows:
        check_row(row, section)
    assert markdown({"cpu": "", "cores": 1, "torch": "", "date": "", "load_avg_at_start": []}, rows, "smoke")


def test_gpu_section_measures_on_cuda(ctx: Context) -> None:
    """On a machine with a CUDA device, ``--device cuda`` measures (on CPU the section only says it cannot)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rows = _sections()["gpu"](dataclasses.replace(ctx, device="cuda"))
    assert len(rows) > 1, rows
    for row in rows:
        check_row(row, "gpu")
        assert row.value is not None, row
