"""Manifest parsing (CSV/JSONL) and input expansion without S3."""

from __future__ import annotations

from pathlib import Path

import pytest

from producers.enumerate import expand_inputs, expand_s3, read_manifest
from producers.errors import ErrorCode, PermanentError


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (
            "m.csv",
            "source\ns3://b/1.jpg\nhttps://x/2.png\n",
            [{"source": "s3://b/1.jpg"}, {"source": "https://x/2.png"}],
        ),
        (
            "m.csv",
            "\ufeffsource,label,priority,idempotency_key\ns3://b/1.jpg,ai,bulk,k1\n s3://b/2.jpg ,human,,\n",
            [
                {"source": "s3://b/1.jpg", "priority": "bulk", "idempotency_key": "k1"},
                {"source": "s3://b/2.jpg"},
            ],
        ),
        (
            "m.jsonl",
            '{"source": "s3://b/1.jpg", "callback_url": "https://h/cb"}\n\n'
            '{"source": "s3://b/2.jpg", "priority": null}\n',
            [{"source": "s3://b/1.jpg", "callback_url": "https://h/cb"}, {"source": "s3://b/2.jpg"}],
        ),
        ("list.txt", '{"source": "s3://b/1.jpg"}\n', [{"source": "s3://b/1.jpg"}]),  # sniffed as JSONL
        ("list.txt", "source\ns3://b/1.jpg\n", [{"source": "s3://b/1.jpg"}]),  # sniffed as CSV
        ("empty.csv", "source\n", []),
    ],
)
def test_read_manifest(tmp_path: Path, name: str, text: str, expected: list[dict[str, str]]) -> None:
    assert list(read_manifest(_write(tmp_path, name, text))) == expected


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("m.csv", "url\nhttps://x/1.jpg\n", "needs a 'source' column"),
        ("m.csv", "source,label\n,ai\n", "line 2: empty source"),
        ("m.jsonl", '{"source": "s3://b/1.jpg"}\nnot json\n', "line 2: not JSON"),
        ("m.jsonl", '["s3://b/1.jpg"]\n', 'line 1: expected an object with a "source" string'),
        (
            "m.jsonl",
            '{"source": "s3://b/1.jpg", "idempotency-key": "k"}\n',
            "line 1: unknown keys ['idempotency-key']",
        ),
        (
            "m.jsonl",
            '{"source": "s3://b/1.jpg", "priority": 1}\n',
            "line 1: keys ['priority'] must be strings",
        ),
    ],
)
def test_bad_manifest_names_file_and_line(tmp_path: Path, name: str, text: str, needle: str) -> None:
    path = _write(tmp_path, name, text)
    with pytest.raises(PermanentError) as info:
        list(read_manifest(path))
    assert info.value.code is ErrorCode.INVALID_JOB
    assert needle in info.value.message and str(path) in info.value.message


def test_missing_manifest_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(PermanentError) as info:
        list(read_manifest(tmp_path / "nope.csv"))
    assert info.value.code is ErrorCode.NOT_FOUND


def test_expand_inputs_without_s3_client(tmp_path: Path) -> None:
    manifest = _write(tmp_path, "m.jsonl", '{"source": "s3://b/m.jpg"}\n')
    items = list(expand_inputs(["https://x/1.jpg", "s3://b/obj.jpg", "photo.jpg"], manifests=[manifest]))
    # inputs pass through as given; validation (e.g. of "photo.jpg") is the producer's job
    assert [i["source"] for i in items] == ["s3://b/m.jpg", "https://x/1.jpg", "s3://b/obj.jpg", "photo.jpg"]
    with pytest.raises(PermanentError, match="needs an S3 client"):
        list(expand_s3("s3://b/prefix/", None))
    with pytest.raises(PermanentError) as info:
        list(expand_s3("s3:///nobucket", None))
    assert info.value.code is ErrorCode.INVALID_SOURCE
