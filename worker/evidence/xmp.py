"""IPTC ``DigitalSourceType`` from an XMP packet, parsed with defusedxml.

A DTD, any entity declaration or an external reference is refused outright (``metadata-unsafe``) rather than
expanded: XMP never needs them, and a "billion laughs" packet then costs one parse of its first bytes. Packets
over the size cap are not parsed at all (``metadata-too-large``).
"""

from __future__ import annotations

from xml.etree.ElementTree import ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from producers.errors import ErrorCode
from worker.core.evidence import Entry, failed, source_type_name

TAG = "DigitalSourceType"
PROVENANCE_TAG = "provenance"  # dcterms:provenance: where C2PA puts a remote manifest's URL


def _local(name: str) -> str:
    return name.rsplit("}", 1)[-1].rsplit(":", 1)[-1]


def read_xmp(packet: bytes, max_bytes: int) -> tuple[list[Entry], str | None]:
    """The packet's digital source types as ``xmp`` entries (none when it names none: absence decides nothing),
    or one coded entry when the packet cannot be read; and the remote C2PA manifest URL it names, if any."""
    if len(packet) > max_bytes:
        return [failed("xmp", ErrorCode.METADATA_TOO_LARGE.value, f"XMP of {len(packet)} bytes over {max_bytes}")], None
    try:
        root = fromstring(packet.strip(b"\x00 \t\r\n"), forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        return [failed("xmp", ErrorCode.METADATA_UNSAFE.value, f"XMP refused: {type(exc).__name__}")], None
    except (ParseError, ValueError) as exc:
        return [failed("xmp", ErrorCode.METADATA_UNREADABLE.value, f"XMP does not parse: {exc}")], None
    found: list[str] = []
    remote: str | None = None
    for element in root.iter():
        values = [v for k, v in element.attrib.items() if _local(k) == TAG]
        if _local(str(element.tag)) == TAG:
            values.append(element.text or "")
            values += [v for k, v in element.attrib.items() if _local(k) == "resource"]
        for value in values:
            name = source_type_name(value)
            if name and name not in found:
                found.append(name)
        if remote is None:
            remote = next((v for k, v in element.attrib.items() if _local(k) == PROVENANCE_TAG), None)
            if remote is None and _local(str(element.tag)) == PROVENANCE_TAG and element.text:
                remote = element.text.strip()
    return [{"kind": "xmp", "digital_source_type": name} for name in found[:4]], remote
