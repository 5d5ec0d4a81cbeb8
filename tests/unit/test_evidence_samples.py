"""The provenance samples in docs/samples (written by tests/support/samples.py) show what the README says."""

from __future__ import annotations

from pathlib import Path

import pytest

from producers.contract import Band, Label, Verdict
from worker.core.evidence import fuse
from worker.evidence.reader import EvidenceReader

SAMPLES = Path(__file__).resolve().parents[2] / "docs" / "samples"
HUMAN = Verdict(score=0.1, label=Label.HUMAN, band=Band.HUMAN, model="m@1")


@pytest.mark.parametrize("name", ["sample-5-c2pa-signed.jpg", "sample-6-sdxl-watermark.webp"])
def test_sample_is_small_and_decided_by_provenance(name: str) -> None:
    data = (SAMPLES / name).read_bytes()
    assert len(data) < 100 * 1024
    entries = EvidenceReader()(data)
    v, fields = fuse(HUMAN, entries)
    assert (v.band, fields["decided_by"]) == (Band.AI, "provenance"), entries


def test_signed_sample_is_valid_not_trusted() -> None:
    """A test signer: its signature and bytes check out, nobody's trust anchors hold it (and it has not expired)."""
    (entry,) = EvidenceReader()((SAMPLES / "sample-5-c2pa-signed.jpg").read_bytes())
    assert entry["kind"] == "c2pa" and entry["validation"] == "valid"
    assert entry["failures"] == ["signingCredential.untrusted"]
    assert entry["digital_source_type"] == "trainedAlgorithmicMedia"


def test_watermark_sample_carries_sdxl() -> None:
    (entry,) = EvidenceReader()((SAMPLES / "sample-6-sdxl-watermark.webp").read_bytes())
    assert (entry["kind"], entry["scheme"], entry["of"]) == ("watermark", "sdxl", 48)
    assert entry["matched_bits"] >= entry["threshold"]
