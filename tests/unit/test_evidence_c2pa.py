"""C2PA manifests signed here by a test CA: trusted / valid / invalid, formats, truncation, the offline settings
and the builder's wiring (trust anchors file, enabled switch)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from producers.contract import Band, Label, Verdict
from producers.errors import ConfigError
from tests.support import evidence as ev
from worker.core.evidence import fuse
from worker.evidence.c2pa_reader import C2paVerifier
from worker.evidence.reader import EvidencePolicy, EvidenceReader
from worker.service import builder
from worker.service.settings import EvidenceSettings, WorkerSettings

pytest.importorskip("c2pa")


def _trusted_reader() -> EvidenceReader:
    return EvidenceReader(EvidencePolicy(trust_anchors_pem=ev.signing_ca().ca_pem.decode()))


@pytest.mark.parametrize(("fmt", "mime"), [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp")])
def test_valid_untrusted_then_trusted(fmt: str, mime: str) -> None:
    signed = ev.c2pa_signed(ev.image(fmt), mime)
    (entry,) = EvidenceReader()(signed)
    assert entry == {
        "kind": "c2pa",
        "validation": "valid",
        "digital_source_type": "trainedAlgorithmicMedia",
        "generator": "FakesakeTestGen 1.0",
        "issuer": "Fakesake Test",
        "actions": ["c2pa.created"],
        "failures": ["signingCredential.untrusted"],
    }
    (trusted,) = _trusted_reader()(signed)
    assert (trusted["validation"], trusted["failures"]) == ("trusted", [])


def test_tampered_manifest_is_invalid_and_decides_nothing() -> None:
    signed = bytearray(ev.c2pa_signed(ev.image("JPEG")))
    signed[-100] ^= 0xFF  # pixels changed after signing
    signed[-200] ^= 0xFF
    (entry,) = _trusted_reader()(bytes(signed))
    assert entry["validation"] == "invalid"
    assert "assertion.dataHash.mismatch" in entry["failures"]
    _, evidence = fuse(_verdict(), [entry])
    assert evidence["decided_by"] == "model"


def _verdict() -> Verdict:
    return Verdict(score=0.1, label=Label.HUMAN, band=Band.HUMAN, model="m@1")


def _truncate_app11(jpeg: bytes) -> bytes:
    """The first APP11 (JUMBF) segment cut to half its body, its length fixed: the picture still decodes."""
    at = jpeg.index(b"\xff\xeb")
    (length,) = struct.unpack(">H", jpeg[at + 2 : at + 4])
    body = jpeg[at + 4 : at + 2 + length][: (length - 2) // 2]
    return jpeg[:at] + b"\xff\xeb" + struct.pack(">H", len(body) + 2) + body + jpeg[at + 2 + length :]


def test_truncated_manifest_is_coded() -> None:
    entries = EvidenceReader()(_truncate_app11(ev.c2pa_signed(ev.image("JPEG"))))
    assert [e.get("error") for e in entries if e["kind"] == "c2pa"] == ["metadata-unreadable"]


def test_offline_settings() -> None:
    assert C2paVerifier().settings()["verify"] == {"remote_manifest_fetch": False, "ocsp_fetch": False}


def test_builder_wires_anchors_and_switch(tmp_path: Path) -> None:
    anchors = tmp_path / "anchors.pem"
    anchors.write_bytes(ev.signing_ca().ca_pem)
    on = WorkerSettings(evidence=EvidenceSettings(trust_anchors_file=str(anchors)))
    reader = builder.evidence_reader(on)
    assert reader is not None
    assert reader(ev.c2pa_signed(ev.image("JPEG")))[0]["validation"] == "trusted"
    assert builder.evidence_reader(WorkerSettings(evidence=EvidenceSettings(enabled=False))) is None
    missing = WorkerSettings(evidence=EvidenceSettings(trust_anchors_file=str(tmp_path / "none.pem")))
    with pytest.raises(ConfigError, match="trust_anchors_file"):
        builder.evidence_reader(missing)
