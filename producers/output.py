"""One formatter for per-image records: ``fakesake scan``, ``submit --wait``, ``result`` and ``dlq``.

A record is a flat-ish dict: ``source`` (exactly as the user gave it), ``status``, ``score``, ``label``,
``band``, ``model``, ``error`` (``{code, message}`` or None) and any extras (``job_id``, ``attempts``,
``timings``, ``source_version`` and ``etag`` of the S3 object scored). Formats:

- ``jsonl``: one JSON object per line, streamed (flushed per record so a pipe sees progress);
- ``csv``: nested dicts flattened with dots (``error.code``, ``error.message``, ``timings.total_ms``);
  the columns are the standard ones plus the extras of the first record;
- ``table``: aligned plain-text columns (reads all records first to size the columns).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any

from producers.contract import DetectorScore, Fusion

FORMATS = ("jsonl", "csv", "table")
COLUMNS = ("source", "status", "score", "label", "band", "model", "error.code", "error.message")
_TABLE_COLUMNS = ("source", "status", "score", "label", "band", "model", "error", "job_id")


def record(
    source: str,
    status: str,
    *,
    score: float | None = None,
    label: str | None = None,
    band: str | None = None,
    model: str | None = None,
    error: tuple[str, str] | None = None,
    **extras: Any,
) -> dict[str, Any]:
    """The one per-image record shape: the standard columns in order, then ``extras`` (``error`` is
    ``(code, message)``). ``scan`` outcomes, stored results and CLI errors are all built here."""
    return {
        "source": source,
        "status": status,
        "score": score,
        "label": label,
        "band": band,
        "model": model,
        "error": None if error is None else {"code": error[0], "message": error[1]},
        **extras,
    }


def ensemble_fields(detectors: Sequence[DetectorScore] | None, fusion: Fusion | None) -> dict[str, Any]:
    """An ensemble's extras: ``detectors`` (each detector's model, score, band, ...) and the ``fusion`` rule that
    made the record's score and band. Nothing for a single detector, whose record keeps its shape."""
    if not detectors:
        return {}
    return {
        "detectors": [d.model_dump(mode="json", exclude_none=True) for d in detectors],
        "fusion": fusion.value if fusion is not None else None,
    }


def flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"error": {"code": "x"}}`` -> ``{"error.code": "x"}``; a None ``error`` gives empty code/message."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif value is None and name == "error":
            flat.update({"error.code": None, "error.message": None})
        else:
            flat[name] = value
    return flat


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        return json.dumps(value, default=str)
    return str(value)


def _write_jsonl(records: Iterable[Mapping[str, Any]], stream: IO[str]) -> int:
    count = 0
    for record in records:
        stream.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        stream.flush()
        count += 1
    return count


def _write_csv(records: Iterable[Mapping[str, Any]], stream: IO[str]) -> int:
    writer: csv.DictWriter[str] | None = None
    count = 0
    for record in records:
        flat = flatten(record)
        if writer is None:
            columns = [*COLUMNS, *(k for k in flat if k not in COLUMNS)]
            writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
        writer.writerow({k: _cell(v) for k, v in flat.items()})
        count += 1
    if writer is None:
        csv.writer(stream, lineterminator="\n").writerow(COLUMNS)
    return count


def _table_row(record: Mapping[str, Any]) -> dict[str, str]:
    row = {k: _cell(record.get(k)) for k in _TABLE_COLUMNS}
    if isinstance(score := record.get("score"), float):
        row["score"] = f"{score:.4f}"
    if isinstance(error := record.get("error"), Mapping):
        row["error"] = f"{error.get('code')}: {error.get('message')}"
    return row


def _write_table(records: Iterable[Mapping[str, Any]], stream: IO[str]) -> int:
    rows = [_table_row(r) for r in records]
    columns = [c for c in _TABLE_COLUMNS if c in ("source", "status") or any(row[c] for row in rows)]
    widths = {c: max([len(c), *(len(row[c]) for row in rows)]) for c in columns}

    def line(cells: Mapping[str, str]) -> str:
        return "  ".join(cells[c].ljust(widths[c]) for c in columns).rstrip() + "\n"

    stream.write(line({c: c for c in columns}))
    for row in rows:
        stream.write(line(row))
    return len(rows)


def write_records(records: Iterable[Mapping[str, Any]], fmt: str, stream: IO[str]) -> int:
    """Write ``records`` to ``stream`` as ``jsonl``, ``csv`` or ``table``; return how many were written."""
    writers = {"jsonl": _write_jsonl, "csv": _write_csv, "table": _write_table}
    if fmt not in writers:
        raise ValueError(f"unknown output format {fmt!r}; choose one of {FORMATS}")
    return writers[fmt](records, stream)
