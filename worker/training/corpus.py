"""Labelled images read once for fine-tuning: fetched through the project's fetchers, checked by its decoder,
and keyed for the group split (name, bytes, pixels).

An input that cannot be fetched or decoded is left out and reported (its code and message), as ``fakesake
eval`` reports them; it never stops the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from producers.errors import FakesakeError
from worker.core.ports import Fetcher
from worker.core.registry import Preprocessing
from worker.evaluation.dataset import AI, HUMAN, LabelledSource
from worker.inference.imaging import DecodePolicy, decode
from worker.training.data import EvalImages, Example, dhash, squash
from worker.training.split import Split, name_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One readable labelled image: where it came from, its bytes, and its group-split keys."""

    source: LabelledSource
    data: bytes
    keys: tuple[str, ...]


@dataclass(frozen=True)
class Failure:
    source: str
    code: str
    message: str


def target_of(label: str, ai_index: int) -> int:
    """The class index of a label (the FFS models put 'by AI' at ``ai_index``)."""
    return ai_index if label == AI else 1 - ai_index


def read(
    sources: Sequence[LabelledSource], fetcher: Fetcher, policy: DecodePolicy, *, progress: bool = True, what: str = ""
) -> tuple[list[Item], list[Failure]]:
    """Fetch and decode every source once; keep the readable ones with their keys."""
    items: list[Item] = []
    failures: list[Failure] = []
    for src in tqdm(sources, desc=what or "read", unit="img", file=sys.stderr, disable=not progress, leave=False):
        try:
            data = fetcher.fetch(src.source).data
            img = decode(data, policy)
        except FakesakeError as exc:
            failures.append(Failure(src.source, exc.code.value, exc.message))
            log.warning("finetune: %s left out: %s: %s", src.source, exc.code.value, exc.message)
            continue
        keys = (name_key(src.source), "sha256:" + hashlib.sha256(data).hexdigest(), dhash(img))
        items.append(Item(src, data, keys))
    return items, failures


def examples(items: Sequence[Item], ai_index: int) -> list[Example]:
    return [Example(i.data, target_of(i.source.label, ai_index), i.source.source) for i in items]


def eval_images(items: Sequence[Item], pre: Preprocessing, policy: DecodePolicy, ai_index: int) -> EvalImages:
    """The inference preprocessing of each item (decoded again: only training bytes are kept in memory)."""
    images = [squash(decode(i.data, policy), pre) for i in items]
    return EvalImages(images, [target_of(i.source.label, ai_index) for i in items], pre)


def split_doc(items: Sequence[Item], sp: Split, failures: Sequence[Failure]) -> dict[str, Any]:
    """``split.json``: the counts, every source on each side, and the inputs left out."""

    def side(indices: tuple[int, ...]) -> list[dict[str, str]]:
        return [{"source": items[i].source.source, "label": items[i].source.label} for i in indices]

    def counts(indices: tuple[int, ...]) -> dict[str, int]:
        labels = [items[i].source.label for i in indices]
        return {label: labels.count(label) for label in (HUMAN, AI)}

    return {
        "counts": {"train": counts(sp.train), "validation": counts(sp.val)},
        "train": side(sp.train),
        "validation": side(sp.val),
        "failed": [vars(f) for f in failures],
    }


def digest(doc: dict[str, Any]) -> str:
    """A fingerprint of a split (which sources train, which validate): a resumed run must have the same one."""
    return hashlib.sha256(json.dumps([doc["train"], doc["validation"]]).encode()).hexdigest()
