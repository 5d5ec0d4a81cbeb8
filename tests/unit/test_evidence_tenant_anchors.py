"""Per-tenant C2PA trust anchors: the same signed file is ``trusted`` for a tenant whose anchors hold its CA and
``valid`` for every other tenant, from the reader up through a worker job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from producers.contract import JobMessage
from producers.errors import ConfigError
from tests.support import evidence as ev
from tests.support.fetchers import MemoryFetcher
from tests.unit.test_processing import _infer, make
from worker.core.pipeline import Preparer
from worker.core.processing import Finished
from worker.evidence.reader import EvidencePolicy, EvidenceReader, load_tenant_anchors
from worker.service import builder
from worker.service.settings import WorkerSettings

SOURCE = "https://img.example/signed.jpg"


@pytest.fixture(scope="module")
def signed() -> bytes:
    return ev.c2pa_signed(ev.image("JPEG", 256))


@pytest.fixture(scope="module")
def other_ca_pem() -> str:
    return ev.signing_ca(31).ca_pem.decode()  # another test CA (another cache key: new keys)


def _validation(entries: list[dict[str, Any]]) -> str:
    (entry,) = [e for e in entries if e["kind"] == "c2pa"]
    return str(entry["validation"])


def test_a_tenants_own_anchors_make_its_signer_trusted(signed: bytes, other_ca_pem: str) -> None:
    ca = ev.signing_ca().ca_pem.decode()
    read = EvidenceReader(EvidencePolicy(tenant_trust_anchors_pem={"acme": ca, "globex": other_ca_pem}))
    assert _validation(read(signed, "acme")) == "trusted"
    assert _validation(read(signed, "globex")) == "valid"
    assert _validation(read(signed, "initech")) == "valid"  # a tenant without a file of its own: global anchors
    assert _validation(read(signed)) == "valid"


def test_global_anchors_still_count_for_a_tenant_with_its_own(signed: bytes, other_ca_pem: str) -> None:
    ca = ev.signing_ca().ca_pem.decode()
    read = EvidenceReader(EvidencePolicy(trust_anchors_pem=ca, tenant_trust_anchors_pem={"globex": other_ca_pem}))
    assert _validation(read(signed, "globex")) == "trusted"
    assert _validation(read(signed)) == "trusted"


def test_folder_of_tenant_files(tmp_path: Path, other_ca_pem: str) -> None:
    (tmp_path / "acme.pem").write_bytes(ev.signing_ca().ca_pem)
    (tmp_path / "globex.pem").write_text(other_ca_pem)
    (tmp_path / "README.txt").write_text("not read")
    assert load_tenant_anchors(str(tmp_path)) == {"acme": ev.signing_ca().ca_pem.decode(), "globex": other_ca_pem}
    (tmp_path / "-bad.pem").write_text(other_ca_pem)
    with pytest.raises(ValueError, match="not a tenant id"):
        load_tenant_anchors(str(tmp_path))
    (tmp_path / "-bad.pem").unlink()
    (tmp_path / "typo.pem").write_text("acme's CA, pasted wrongly")
    with pytest.raises(ValueError, match="no PEM certificate"):
        load_tenant_anchors(str(tmp_path))


def test_builder_reads_the_folder_and_refuses_a_bad_one(tmp_path: Path, signed: bytes) -> None:
    (tmp_path / "acme.pem").write_bytes(ev.signing_ca().ca_pem)
    settings = WorkerSettings(evidence={"enabled": True, "tenant_trust_anchors_dir": str(tmp_path)})
    read = builder.evidence_reader(settings)
    assert read is not None
    assert (_validation(read(signed, "acme")), _validation(read(signed, "globex"))) == ("trusted", "valid")
    missing = WorkerSettings(evidence={"enabled": True, "tenant_trust_anchors_dir": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="tenant_trust_anchors_dir"):
        builder.evidence_reader(missing)


def test_a_job_is_read_with_its_tenants_anchors(signed: bytes) -> None:
    read = EvidenceReader(EvidencePolicy(tenant_trust_anchors_pem={"acme": ev.signing_ca().ca_pem.decode()}))
    preparer = Preparer(MemoryFetcher({SOURCE: signed}), lambda data: data, read)
    proc, _, _ = make(preparer, infer=_infer(0.1))  # type: ignore[arg-type]
    seen = {}
    for tenant in ("acme", "globex"):
        decision = proc.process(JobMessage(tenant=tenant, source=SOURCE))
        assert isinstance(decision, Finished)
        seen[tenant] = _validation(decision.result.evidence["provenance"])
        assert decision.result.evidence["decided_by"] == "provenance"  # an AI claim decides either way
    assert seen == {"acme": "trusted", "globex": "valid"}
