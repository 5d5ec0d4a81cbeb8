"""The evidence reader handed to :class:`~worker.core.pipeline.Preparer` as its ``inspect``: bytes -> entries.

It reads the bytes the model is about to score (never a second fetch), and never raises for what a file carries:
every unreadable or hostile block becomes an entry with an error code, and the image is classified as usual.
C2PA validation (a few ms) runs only when the container holds a C2PA box or its XMP names a remote manifest;
a plain JPEG costs one walk of its segment headers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from producers.errors import ErrorCode
from worker.core.evidence import Entry, failed
from worker.evidence import containers, generators
from worker.evidence.c2pa_reader import C2paVerifier
from worker.evidence.xmp import read_xmp


@dataclass(frozen=True)
class EvidencePolicy:
    """What to read and how much: prompts (personal data) only when asked; the C2PA trust anchors (PEM)."""

    include_prompts: bool = False
    c2pa: bool = True
    trust_anchors_pem: str | None = None
    limits: containers.Limits = field(default_factory=containers.Limits)


class EvidenceReader:
    """``inspect(data) -> entries`` for one process (thread-safe: prepare threads share it)."""

    def __init__(self, policy: EvidencePolicy | None = None) -> None:
        self.policy = policy or EvidencePolicy()
        self.c2pa = C2paVerifier(self.policy.trust_anchors_pem) if self.policy.c2pa else None

    def __call__(self, data: bytes) -> list[Entry]:
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
        if self.c2pa is not None and (meta.c2pa or remote):
            found = self.c2pa.read(data, meta.format)
            if not found and meta.c2pa:  # a C2PA box the library cannot make a manifest of: garbage or cut short
                found = [failed("c2pa", ErrorCode.METADATA_UNREADABLE.value, "C2PA box without a readable manifest")]
            entries = found + entries
        entries += [failed("metadata", code, message) for code, message in meta.problems]
        return _unique(entries)


def _unique(entries: list[Entry]) -> list[Entry]:
    out: list[Entry] = []
    for entry in entries:
        if entry not in out:
            out.append(entry)
    return out
