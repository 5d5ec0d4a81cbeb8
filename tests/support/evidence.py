"""Provenance fixtures made here: XMP packets, PNG text chunks, EXIF, and C2PA files signed by a test CA."""

from __future__ import annotations

import datetime
import io
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from PIL import Image

from tests.support.images import encode, photo

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
MiB = 1 << 20


def xmp_packet(source_type: str | None = None, *, element: bool = False, extra: str = "") -> bytes:
    """An XMP packet naming ``source_type`` as an attribute (Photoshop's form) or an element."""
    value = f"{IPTC}{source_type}" if source_type else ""
    attr = f' Iptc4xmpExt:DigitalSourceType="{value}"' if source_type and not element else ""
    child = f"<Iptc4xmpExt:DigitalSourceType>{value}</Iptc4xmpExt:DigitalSourceType>" if element else ""
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"{attr}>'
        f"{child}{extra}</rdf:Description></rdf:RDF></x:xmpmeta>"
        '<?xpacket end="w"?>'
    ).encode()


ENTITY_BOMB = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">'.encode() for i in range(1, 10)).replace(
        b"&lol0;", b"&lol;"
    )
    + b']><x:xmpmeta xmlns:x="adobe:ns:meta/">&lol9;</x:xmpmeta>'
)


def image(fmt: str = "PNG", size: int = 64, **params: object) -> bytes:
    return encode(photo(size, size, seed=3), fmt, **params)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def text_chunk(key: str, value: bytes, kind: str = "tEXt") -> bytes:
    """A PNG text chunk: tEXt (latin-1), zTXt (deflated), or iTXt (``iTXt`` plain, ``iTXt-z`` deflated)."""
    k = key.encode("latin-1") + b"\x00"
    if kind == "tEXt":
        return png_chunk(b"tEXt", k + value)
    if kind == "zTXt":
        return png_chunk(b"zTXt", k + b"\x00" + zlib.compress(value, 9))
    deflated = kind == "iTXt-z"
    body = zlib.compress(value, 9) if deflated else value
    return png_chunk(b"iTXt", k + bytes([int(deflated), 0]) + b"\x00\x00" + body)


def with_png_chunks(png: bytes, *chunks: bytes, after_idat: bool = False) -> bytes:
    """Insert chunks after IHDR (or before IEND: text after the pixels, as some tools write it)."""
    at = len(png) - 12 if after_idat else 8 + 25
    return png[:at] + b"".join(chunks) + png[at:]


def jpeg_with_xmp(jpeg: bytes, packet: bytes) -> bytes:
    body = b"http://ns.adobe.com/xap/1.0/\x00" + packet
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def exif_block(software: str | None = None, user_comment: bytes | None = None) -> bytes:
    exif = Image.Exif()
    if software:
        exif[0x0131] = software
    if user_comment is not None:
        exif.get_ifd(0x8769)[0x9286] = user_comment
    return exif.tobytes()


A1111 = b"a red fox in the snow\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1"
COMFY_PROMPT = json.dumps({"3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox"}}}).encode()
COMFY_WORKFLOW = json.dumps({"nodes": [{"id": 3, "type": "CLIPTextEncode"}], "links": []}).encode()


@dataclass(frozen=True)
class SigningCA:
    """An ES256 CA and a leaf signer (CA:FALSE, digitalSignature, emailProtection), as C2PA requires."""

    ca_pem: bytes
    chain_pem: bytes  # leaf then CA
    key_pem: bytes


@cache
def signing_ca(valid_days: int = 30) -> SigningCA:
    """A fresh test CA and signer valid from yesterday for ``valid_days`` (docs/samples uses a long-lived one, so
    its committed sample keeps validating)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Fakesake Test"),
            ]
        )

    def usage(sign: bool) -> x509.KeyUsage:
        return x509.KeyUsage(sign, False, False, False, False, not sign, not sign, False, False)

    now = datetime.datetime.now(datetime.UTC)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def base(subject: str, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name("Fakesake Test CA"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=valid_days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )

    ca = (
        base("Fakesake Test CA", ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage(False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        base("Fakesake Test Signer", leaf_key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key = leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return SigningCA(ca.public_bytes(pem), leaf.public_bytes(pem) + ca.public_bytes(pem), key)


def c2pa_signed(
    data: bytes,
    mime: str = "image/jpeg",
    source_type: str = "trainedAlgorithmicMedia",
    remote_url: str | None = None,
    ca: SigningCA | None = None,
) -> bytes:
    """``data`` with a C2PA manifest (embedded, or only a pointer to ``remote_url``) signed by ``ca`` (default
    :func:`signing_ca`)."""
    import c2pa

    ca = ca or signing_ca()
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, ca.chain_pem, ca.key_pem, None))
    manifest = {
        "claim_generator_info": [{"name": "FakesakeTestGen", "version": "1.0"}],
        "title": "fixture",
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {"actions": [{"action": "c2pa.created", "digitalSourceType": IPTC + source_type}]},
            }
        ],
    }
    builder = c2pa.Builder(json.dumps(manifest))
    if remote_url:
        builder.set_no_embed()
        builder.set_remote_url(remote_url)
    out = io.BytesIO()
    builder.sign(signer, mime, io.BytesIO(data), out)
    return out.getvalue()


def _bomb_chunk(kind: str) -> bytes:
    return text_chunk("parameters", b"Steps: " + b"\x00" * (16 * MiB), kind)  # 16 MiB inflated, ~16 KiB deflated


def hostile_metadata() -> dict[str, tuple[Callable[[], bytes], str | None]]:
    """name -> (a good picture with hostile metadata, the code its evidence entry must carry; None: no entry)."""
    return {
        "xml-entity-bomb-png": (
            lambda: with_png_chunks(image(), text_chunk("XML:com.adobe.xmp", ENTITY_BOMB, "iTXt")),
            "metadata-unsafe",
        ),
        "xml-entity-bomb-jpeg": (lambda: jpeg_with_xmp(image("JPEG"), ENTITY_BOMB), "metadata-unsafe"),
        "multi-megabyte-xmp": (
            lambda: with_png_chunks(
                image(),
                text_chunk(
                    "XML:com.adobe.xmp", xmp_packet("trainedAlgorithmicMedia", extra=" " * (3 * MiB // 2)), "iTXt"
                ),
            ),
            "metadata-too-large",
        ),
        "thousands-of-text-chunks": (
            lambda: with_png_chunks(image(), *(text_chunk(f"k{i}", b"v" * 100) for i in range(5000))),
            "metadata-too-large",
        ),
        "zlib-bomb-ztxt": (lambda: with_png_chunks(image(), _bomb_chunk("zTXt")), "metadata-too-large"),
        "zlib-bomb-itxt": (lambda: with_png_chunks(image(), _bomb_chunk("iTXt-z")), "metadata-too-large"),
        "many-zlib-bombs": (
            lambda: with_png_chunks(image(), *[_bomb_chunk("zTXt")] * 60),
            "metadata-too-large",
        ),
        "zlib-bomb-after-the-pixels": (
            lambda: with_png_chunks(image(), _bomb_chunk("iTXt-z"), after_idat=True),
            "metadata-too-large",
        ),
        "broken-zlib": (
            lambda: with_png_chunks(image(), png_chunk(b"zTXt", b"parameters\x00\x00not zlib")),
            "metadata-unreadable",
        ),
        "garbage-xmp": (lambda: jpeg_with_xmp(image("JPEG"), b"<x:xmpmeta><unclosed"), "metadata-unreadable"),
        # Pillow's EXIF parser skips what it cannot read: no entry, and nothing raised
        "garbage-exif": (lambda: image("JPEG", exif=b"MM\x00\x2a\xff\xff\xff\xff" + b"\x07" * 40), None),
        "garbage-jumbf-jpeg-app11": (
            lambda: (lambda j: j[:2] + b"\xff\xeb\x01\x02JP" + bytes(254) + j[2:])(image("JPEG")),
            "metadata-unreadable",
        ),
        "garbage-jumbf-png-cabx": (
            lambda: with_png_chunks(image(), png_chunk(b"caBX", b"\x00\x00\x00\x10jumb" + bytes(300))),
            "metadata-unreadable",
        ),
    }


def watermarked(
    bits: tuple[int, ...],
    width: int = 768,
    height: int = 512,
    seed: int = 3,
    base: Image.Image | None = None,
    float_pixels: bool = False,
) -> Image.Image:
    """A photo (or ``base``) carrying ``bits`` by invisible-watermark's own "dwtDct" encoder (a test-only
    dependency): on uint8 pixels as the SD 1.x/2.x scripts call it, or (``float_pixels``) on float32 0..255 then
    rounded, as SDXL's sgm/diffusers and FLUX call it. The default photo keeps every scheme's 8-bit mark over its
    threshold."""
    import numpy as np
    from imwatermark import WatermarkEncoder

    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", list(bits))
    bgr = np.ascontiguousarray(np.asarray(base or photo(width, height, seed))[..., ::-1])
    if float_pixels:
        marked = np.clip(np.round(encoder.encode(bgr.astype(np.float32), "dwtDct")), 0, 255).astype(np.uint8)
    else:
        marked = encoder.encode(bgr, "dwtDct")
    return Image.fromarray(np.ascontiguousarray(marked[..., ::-1]), "RGB")


def library_bits(rgb: object, length: int) -> list[bool]:
    """What invisible-watermark's own decoder reads from RGB pixels (it takes BGR, as from ``cv2.imread``)."""
    import numpy as np
    from imwatermark import WatermarkDecoder

    bgr = np.ascontiguousarray(np.asarray(rgb)[..., ::-1])
    return [bool(b) for b in WatermarkDecoder("bits", length).decode(bgr, "dwtDct")]
