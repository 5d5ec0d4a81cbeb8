"""Labelled sources for an evaluation: ``--real``/``--ai`` groups, ``--dataset NAME=SRC:label``, manifests.

Pure: the expansion of a folder, URL or S3 prefix into sources is injected (the command passes the one
``fakesake scan`` uses), so an evaluation scores exactly the images a scan of the same inputs would.
Labels are the truth the user gives, in the vocabulary of results: ``ai`` or ``human``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from producers.errors import ConfigError

AI = "ai"
HUMAN = "human"
# What users write for the two classes; results and reports only say ai / human.
_LABEL_WORDS = {
    "ai": AI,
    "fake": AI,
    "generated": AI,
    "1": AI,
    "human": HUMAN,
    "real": HUMAN,
    "0": HUMAN,
}
#: The dataset names of ``--real`` and ``--ai`` sources (and of manifest rows without a dataset column).
GROUP_NAME = {HUMAN: "real", AI: "ai"}

Expand = Callable[[Iterable[str]], Iterator[str]]


def parse_label(word: str, where: str) -> str:
    """``ai`` or ``human`` from the words users write for them (ConfigError otherwise)."""
    label = _LABEL_WORDS.get(word.strip().lower())
    if label is None:
        raise ConfigError(f"{where}: label must be ai or human (or fake/real, 1/0), got {word!r}")
    return label


@dataclass(frozen=True)
class LabelledInput:
    """One input as given (file, folder, URL, S3 prefix), its true label and the dataset it belongs to."""

    source: str
    label: str
    dataset: str


@dataclass(frozen=True)
class LabelledSource:
    """One image to score: an expanded source with its label and dataset."""

    source: str
    label: str
    dataset: str


def parse_dataset(spec: str) -> list[LabelledInput]:
    """``NAME=SRC:ai|human`` (SRC may itself hold colons, e.g. ``s3://`` or ``https://``)."""
    name, sep, rest = spec.partition("=")
    source, colon, word = rest.rpartition(":")
    if not sep or not name.strip() or not colon or not source:
        raise ConfigError(f"--dataset {spec!r}: expected NAME=SRC:ai|human")
    return [LabelledInput(source, parse_label(word, f"--dataset {spec!r}"), name.strip())]


def read_manifest(path: str | Path) -> list[LabelledInput]:
    """Rows of ``source,label[,dataset]`` from a CSV (with that header) or JSONL file (one object a line)."""
    where = f"manifest {path}"
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"{where}: {exc.strerror}") from None
    rows: list[tuple[int, dict[str, str]]] = []
    if Path(path).suffix.lower() in (".jsonl", ".ndjson", ".json"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{where}, line {n}: not JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise ConfigError(f"{where}, line {n}: expected an object with source and label")
            rows.append((n, {k: str(v) for k, v in obj.items() if v is not None}))
    else:
        reader = csv.DictReader(text.splitlines())
        if reader.fieldnames is None or not {"source", "label"} <= set(reader.fieldnames):
            raise ConfigError(f"{where}: a CSV manifest needs 'source' and 'label' columns, found {reader.fieldnames}")
        rows = [(n, row) for n, row in enumerate(reader, 2)]
    out = []
    for n, row in rows:
        source, word = (row.get("source") or "").strip(), row.get("label") or ""
        if not source:
            raise ConfigError(f"{where}, line {n}: no source")
        label = parse_label(word, f"{where}, line {n}")
        out.append(LabelledInput(source, label, (row.get("dataset") or "").strip() or GROUP_NAME[label]))
    return out


def labelled_inputs(
    real: Iterable[str] = (),
    ai: Iterable[str] = (),
    datasets: Iterable[str] = (),
    manifests: Iterable[str | Path] = (),
) -> list[LabelledInput]:
    """Every input of the command line, in the order: --real, --ai, --dataset, --manifest."""
    inputs = [LabelledInput(s, HUMAN, GROUP_NAME[HUMAN]) for s in real]
    inputs += [LabelledInput(s, AI, GROUP_NAME[AI]) for s in ai]
    for spec in datasets:
        inputs += parse_dataset(spec)
    for path in manifests:
        inputs += read_manifest(path)
    return inputs


def expand(inputs: Iterable[LabelledInput], expand_sources: Expand) -> Iterator[LabelledSource]:
    """One labelled source per image: each input expanded by ``expand_sources``, keeping its label."""
    for item in inputs:
        for source in expand_sources([item.source]):
            yield LabelledSource(source, item.label, item.dataset)
