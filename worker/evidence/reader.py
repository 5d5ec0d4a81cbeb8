"""The evidence reader handed to :class:`~worker.core.pipeline.Preparer` as its ``inspect``: bytes -> entries.

It reads the bytes the model is about to score (never a second fetch), and never raises for what a file carries:
every unreadable or hostile block becomes an entry with an error code, and the image is classified as usual.
C2PA validation (a few ms) runs only when the container holds a C2PA box or its XMP names a remote manifest;
a plain JPEG costs one walk of its segment headers. The invisible-watermark check decodes the pixels a second time
(the model's decode yields its resized input, not the file's pixels) and costs more than the model on CPU, so by
default it runs on lossless files only (:data:`~worker.evidence.watermark.WHEN`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from producers.contract import TenantId
from producers.errors import ErrorCode
from worker.core.evidence import Entry, failed
from worker.evidence import containers, generators, watermark
from worker.evidence.c2pa_reader import C2paVerifier
from worker.evidence.xmp import read_xmp


@dataclass(frozen=True)
class EvidencePolicy:
    """What to read and how much: prompts (personal data) only when asked; the C2PA trust anchors (PEM), for every
    tenant and per tenant (added to the global ones for that tenant's jobs); when the watermark check runs
    (``lossless`` | ``always`` | ``off``) and on images of at most how many pixels."""

    include_prompts: bool = False
    c2pa: bool = True
    trust_anchors_pem: str | None = None
    limits: containers.Limits = field(default_factory=containers.Limits)
    watermark: str = "lossless"
    watermark_max_px: int = 2048 * 2048
    tenant_trust_anchors_pem: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.watermark not in watermark.WHEN:
            raise ValueError(f"watermark must be one of {', '.join(watermark.WHEN)}, not {self.watermark!r}")


class EvidenceReader:
    """``inspect(data) -> entries`` for one process (thread-safe: prepare threads share it)."""

    def __init__(self, policy: EvidencePolicy | None = None) -> None:
        self.policy = policy or EvidencePolicy()
        self.c2pa = C2paVerifier(self.policy.trust_anchors_pem) if self.policy.c2pa else None
        # One verifier per tenant with anchors of its own (each makes its native context on first use only).
        self.tenant_c2pa = {
            tenant: C2paVerifier("\n".join(p for p in (self.policy.trust_anchors_pem, pem) if p))
            for tenant, pem in self.policy.tenant_trust_anchors_pem.items()
            if self.policy.c2pa
        }

    def __call__(self, data: bytes, tenant: str | None = None) -> list[Entry]:
        """The entries of one image; ``tenant``'s own trust anchors (if it has any) decide ``trusted``."""
        verifier = self.tenant_c2pa.get(tenant, self.c2pa) if tenant is not None else self.c2pa
        meta = containers.read(data, self.policy.limits)
        entries: list[Entry] = []
        remote: str | None = None
        for packet in meta.xmp:
            found, url = read_xmp(packet, self.policy.limits.max_block_bytes)
            entries += found
            remote = remote or url
        entries += generators.from_text(meta.text, self.policy.include_prompts)
        for block in meta.exif:
            try:
                software, comment = generators.exif_strings(block)
            except Exception as exc:  # Pillow's EXIF parser on garbage: any error, one coded entry
                entries.append(failed("exif", ErrorCode.METADATA_UNREADABLE.value, f"{type(exc).__name__}: {exc}"))
                continue
            entries += generators.from_exif(software, comment, self.policy.include_prompts)
        if verifier is not None and (meta.c2pa or remote):
            found = verifier.read(data, meta.format)
            if not found and meta.c2pa:  # a C2PA box the library cannot make a manifest of: garbage or cut short
                found = [failed("c2pa", ErrorCode.METADATA_UNREADABLE.value, "C2PA box without a readable manifest")]
            entries = found + entries
        entries += [failed("metadata", code, message) for code, message in meta.problems]
        if self.policy.watermark == "always" or (self.policy.watermark == "lossless" and meta.lossless):
            entries += watermark.read(data, self.policy.watermark_max_px)
        return _unique(entries)


def _unique(entries: list[Entry]) -> list[Entry]:
    out: list[Entry] = []
    for entry in entries:
        if entry not in out:
            out.append(entry)
    return out


def load_tenant_anchors(folder: str) -> dict[str, str]:
    """``<tenant>.pem`` files of ``folder`` -> {tenant: PEM}. ValueError for a name that is not a tenant id or a
    file with no certificate in it (a typo must stop the process, not quietly leave a tenant untrusted)."""
    tenant_id: TypeAdapter[str] = TypeAdapter(TenantId)
    anchors: dict[str, str] = {}
    for path in sorted(Path(folder).iterdir()):
        if path.suffix != ".pem":
            continue
        try:
            tenant = tenant_id.validate_python(path.stem)
        except ValidationError:
            raise ValueError(f"{path.name}: {path.stem!r} is not a tenant id") from None
        pem = path.read_text(encoding="ascii")
        if "-----BEGIN CERTIFICATE-----" not in pem:
            raise ValueError(f"{path.name}: no PEM certificate")
        anchors[tenant] = pem
    return anchors
