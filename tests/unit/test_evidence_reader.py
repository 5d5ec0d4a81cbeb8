"""Evidence read from the fetched bytes: XMP digital source types, generator metadata, hostile metadata, and the
pipeline carrying it to the record (real decoding, a fake classifier that always says 'human')."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import pytest

from producers.contract import Status
from tests.support import evidence as ev
from tests.support.fetchers import MemoryFetcher
from worker.core import registry
from worker.core.batcher import Batcher
from worker.core.batching import BatchPolicy
from worker.core.pipeline import Pipeline, Preparer
from worker.evidence.reader import EvidencePolicy, EvidenceReader
from worker.inference.imaging import DecodePolicy
from worker.inference.preprocess import from_bytes
from worker.service.scan import outcome_record

SPEC = registry.get("ffs-mj-5m")
MiB = 1 << 20
READ = EvidenceReader()

TRAINED = "trainedAlgorithmicMedia"
COMPOSITE = "compositeWithTrainedAlgorithmicMedia"


def _xmp(source_type: str) -> list[dict[str, Any]]:
    return [{"kind": "xmp", "digital_source_type": source_type}]


def _gen(tool: str, key: str) -> list[dict[str, Any]]:
    return [{"kind": "generator-metadata", "tool": tool, "key": key}]


XMP_CASES: dict[str, tuple[Callable[[], bytes], list[dict[str, Any]]]] = {
    "jpeg app1 attribute": (lambda: ev.jpeg_with_xmp(ev.image("JPEG"), ev.xmp_packet(TRAINED)), _xmp(TRAINED)),
    "jpeg app1 element": (
        lambda: ev.jpeg_with_xmp(ev.image("JPEG"), ev.xmp_packet(COMPOSITE, element=True)),
        _xmp(COMPOSITE),
    ),
    "png itxt": (
        lambda: ev.with_png_chunks(ev.image(), ev.text_chunk("XML:com.adobe.xmp", ev.xmp_packet(TRAINED), "iTXt")),
        _xmp(TRAINED),
    ),
    "png itxt deflated after the pixels": (
        lambda: ev.with_png_chunks(
            ev.image(), ev.text_chunk("XML:com.adobe.xmp", ev.xmp_packet("algorithmicMedia"), "iTXt-z"), after_idat=True
        ),
        _xmp("algorithmicMedia"),
    ),
    "webp chunk": (lambda: ev.image("WEBP", xmp=ev.xmp_packet("digitalCapture")), _xmp("digitalCapture")),
    "xmp without a source type": (lambda: ev.jpeg_with_xmp(ev.image("JPEG"), ev.xmp_packet()), []),
    "no metadata": (lambda: ev.image("JPEG"), []),
    "a1111 parameters": (
        lambda: ev.with_png_chunks(ev.image(), ev.text_chunk("parameters", ev.A1111)),
        _gen("automatic1111", "parameters"),
    ),
    "forge parameters": (
        lambda: ev.with_png_chunks(ev.image(), ev.text_chunk("parameters", ev.A1111 + b", Version: f0.0.17v1.8.0")),
        _gen("forge", "parameters"),
    ),
    "fooocus parameters json": (
        lambda: ev.with_png_chunks(
            ev.image(), ev.text_chunk("parameters", b'{"Prompt": "a fox", "Version": "Fooocus v2.5.0"}')
        ),
        _gen("fooocus", "parameters"),
    ),
    "comfyui prompt and workflow": (
        lambda: ev.with_png_chunks(
            ev.image(), ev.text_chunk("prompt", ev.COMFY_PROMPT, "zTXt"), ev.text_chunk("workflow", ev.COMFY_WORKFLOW)
        ),
        _gen("comfyui", "prompt") + _gen("comfyui", "workflow"),
    ),
    "invokeai": (
        lambda: ev.with_png_chunks(ev.image(), ev.text_chunk("invokeai_metadata", b'{"positive_prompt": "a fox"}')),
        _gen("invokeai", "invokeai_metadata"),
    ),
    "invokeai legacy dream": (
        lambda: ev.with_png_chunks(ev.image(), ev.text_chunk("Dream", b'"a fox" -s 50 -S 42')),
        _gen("invokeai", "Dream"),
    ),
    "novelai": (
        lambda: ev.with_png_chunks(
            ev.image(),
            ev.text_chunk("Software", b"NovelAI"),
            ev.text_chunk("Comment", b'{"prompt": "a fox", "steps": 28, "sampler": "k_euler"}'),
        ),
        _gen("novelai", "Software") + _gen("novelai", "Comment"),
    ),
    "midjourney": (
        lambda: ev.with_png_chunks(ev.image(), ev.text_chunk("Description", b"a fox --ar 1:1 Job ID: 1234-abcd")),
        _gen("midjourney", "Description"),
    ),
    "exif software and usercomment": (
        lambda: ev.image("JPEG", exif=ev.exif_block("NovelAI", b"UNICODE\x00" + ev.A1111.decode().encode("utf-16-be"))),
        _gen("novelai", "Software") + _gen("automatic1111", "UserComment"),
    ),
    "camera exif software": (lambda: ev.image("JPEG", exif=ev.exif_block("Adobe Photoshop 25.0")), []),
    "ordinary png text": (
        lambda: ev.with_png_chunks(ev.image(), ev.text_chunk("Title", b"holiday"), ev.text_chunk("prompt", b"hi")),
        [],
    ),
}


@pytest.mark.parametrize("name", list(XMP_CASES))
def test_signals(name: str) -> None:
    make, expected = XMP_CASES[name]
    assert READ(make()) == expected


def test_prompts_only_when_asked() -> None:
    data = ev.with_png_chunks(ev.image(), ev.text_chunk("parameters", ev.A1111))
    assert "prompt" not in READ(data)[0]
    with_prompts = EvidenceReader(EvidencePolicy(include_prompts=True))(data)
    assert with_prompts[0]["prompt"] == "a red fox in the snow"


def _coded(entries: list[dict[str, Any]]) -> set[str]:
    return {e["error"] for e in entries if "error" in e}


HOSTILE = ev.hostile_metadata()


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_metadata_is_bounded_and_coded(name: str) -> None:
    make, code = HOSTILE[name]
    data = make()
    tracemalloc.start()
    start = time.perf_counter()
    try:
        entries = READ(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 5.0  # generous bound for a loaded CI box; typical runs take ms
    assert peak < 24 * MiB + 4 * len(data), peak
    assert (code in _coded(entries)) if code else entries == [], entries


class HumanClassifier:
    """Every image scores 0.05 (band human), so only evidence can make a record say ai."""

    def predict(self, batch: Sequence[Any]) -> list[float]:
        return [0.05] * len(batch)


def _pipeline(items: dict[str, bytes], reader: EvidenceReader | None = READ) -> Pipeline:
    decode = partial(from_bytes, policy=DecodePolicy(), pre=SPEC.preprocessing)
    batcher = Batcher(HumanClassifier().predict, BatchPolicy(4, max_wait_s=0.5)).start()
    return Pipeline(SPEC, Preparer(MemoryFetcher(items), decode, reader), batcher, prepare_threads=2)


def test_pipeline_fuses_evidence_into_each_record() -> None:
    items = {
        "mem://plain": ev.image("JPEG"),
        "mem://xmp": ev.jpeg_with_xmp(ev.image("JPEG"), ev.xmp_packet(TRAINED)),
        "mem://composite": ev.image("WEBP", xmp=ev.xmp_packet(COMPOSITE)),
        "mem://bomb": HOSTILE["xml-entity-bomb-png"][0](),
        "mem://comfy": XMP_CASES["comfyui prompt and workflow"][0](),
        "mem://not-an-image": b"<html>",
    }
    pipe = _pipeline(items)
    try:
        records = {o.source: outcome_record(o) for o in pipe.classify(items)}
    finally:
        pipe.batcher.stop()
    summary = {s: (r["status"], r["band"], r["label"], r["evidence"]["decided_by"]) for s, r in records.items()}
    assert summary == {
        "mem://plain": ("ok", "human", "human", "model"),
        "mem://xmp": ("ok", "ai", "ai", "provenance"),
        "mem://composite": ("ok", "human", "human", "model"),
        "mem://bomb": ("ok", "human", "human", "model"),  # classified; the entry is coded
        "mem://comfy": ("ok", "ai", "ai", "provenance"),
        "mem://not-an-image": ("error", None, None, None),
    }
    assert all(r["score"] == pytest.approx(0.05) for r in records.values() if r["status"] == "ok")
    assert records["mem://composite"]["evidence"]["ai_edited"] is True
    assert _coded(records["mem://bomb"]["evidence"]["provenance"]) == {"metadata-unsafe"}
    assert set(records["mem://plain"]["evidence"]) == set(records["mem://not-an-image"]["evidence"])  # CSV columns


def test_a_failing_reader_never_fails_the_image() -> None:
    def broken(_: bytes) -> list[dict[str, Any]]:
        raise RuntimeError("reader bug")

    pipe = _pipeline({"mem://a": ev.image("JPEG")}, broken)  # type: ignore[arg-type]
    try:
        (outcome,) = list(pipe.classify(["mem://a"]))
    finally:
        pipe.batcher.stop()
    assert outcome.status is Status.OK and outcome.band is not None
    assert _coded(outcome.evidence["provenance"]) == {"internal"}


def test_every_hostile_file_is_still_classified() -> None:
    items = {f"mem://{name}": make() for name, (make, _) in HOSTILE.items()}
    pipe = _pipeline(items)
    try:
        outcomes = list(pipe.classify(items))
    finally:
        pipe.batcher.stop()
    assert [o.status for o in outcomes] == [Status.OK] * len(items)
    for outcome, (_, code) in zip(outcomes, HOSTILE.values(), strict=True):
        assert outcome.evidence["decided_by"] == "model"
        assert code is None or code in _coded(outcome.evidence["provenance"]), outcome.source
