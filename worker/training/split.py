"""Train/validation split by source group, deterministic for a seed. Pure.

Near-duplicates (one picture re-encoded, resized, or saved again as "x (1).jpg") on both sides of the split
would let validation reward memory, so images are grouped first and whole groups go to one side. Two images
are in one group when they share any key: the caller gives each image its keys (:func:`name_key` of its
source, and content fingerprints such as the sha256 of its bytes or a perceptual hash of its pixels), and
groups are the connected components. The split is stratified by label: each label sends about
``val_fraction`` of its images to validation, in whole groups, and keeps at least one group for training.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from producers.errors import ConfigError

# Suffixes that mark a copy of the same picture, not a different one: " (1)", "_copy", "-2x", "_512x512",
# "-thumb". Plain counters ("img_001") name different pictures and are kept.
_COPY_MARKER = re.compile(
    r"(?:[ _-]*\(\d+\)|[ _-]+copy(?:[ _-]*\d+)?|[ _-]*@\d+x|[ _-]+\d+x\d+|[ _-]+\d+px|[ _-]+(?:thumb|small|large))$",
    re.IGNORECASE,
)


def name_key(source: str) -> str:
    """``name:`` + the source's folder and file stem without copy markers, lower case (query strings dropped)."""
    path = source.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    folder, _, name = path.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    previous = None
    while previous != stem:
        previous, stem = stem, _COPY_MARKER.sub("", stem)
    return f"name:{folder.lower()}/{(stem or name).lower()}"


def groups(keys: Sequence[Iterable[str]]) -> list[int]:
    """The group of each item (0, 1, ... in order of first appearance): items sharing a key are one group."""
    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, item_keys in enumerate(keys):
        for key in item_keys:
            j = owner.setdefault(key, i)
            a, b = root(i), root(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    ids: dict[int, int] = {}
    return [ids.setdefault(root(i), len(ids)) for i in range(len(keys))]


@dataclass(frozen=True)
class Split:
    """Indices of the training and validation items (ascending) and how many groups each side holds."""

    train: tuple[int, ...]
    val: tuple[int, ...]
    train_groups: int
    val_groups: int


def split(labels: Sequence[str], group_of: Sequence[int], val_fraction: float, seed: int) -> Split:
    """Stratified, group-aware split. A group with mixed labels counts under its most common label (ties: the
    label sorting first). ConfigError when a label has too few groups to appear on both sides."""
    if len(labels) != len(group_of):
        raise ValueError("one group per label")
    members: dict[int, list[int]] = {}
    for i, g in enumerate(group_of):
        members.setdefault(g, []).append(i)
    by_label: dict[str, list[int]] = {}
    for g, items in members.items():
        counts: dict[str, int] = {}
        for i in items:
            counts[labels[i]] = counts.get(labels[i], 0) + 1
        label = sorted(counts, key=lambda k: (-counts[k], k))[0]
        by_label.setdefault(label, []).append(g)
    if len(by_label) < 2:
        raise ConfigError(f"fine-tuning needs images of both labels, got only {sorted(by_label) or 'none'}")
    val_groups: list[int] = []
    for label in sorted(by_label):
        gs = sorted(by_label[label])
        if len(gs) < 2:
            n = sum(len(members[g]) for g in gs)
            raise ConfigError(
                f"cannot split the {label} images into training and validation: all {n} are one group of "
                "near-duplicates (same name or same pixels); add more distinct images"
            )
        # A string seed is hashed with sha512 by random.seed: the same on every machine and Python run.
        random.Random(f"{seed}:{label}").shuffle(gs)
        total = sum(len(members[g]) for g in gs)
        target = max(1, round(val_fraction * total))
        taken = 0
        for g in gs[:-1]:  # the last group always trains
            if taken >= target:
                break
            val_groups.append(g)
            taken += len(members[g])
    val_set = {i for g in val_groups for i in members[g]}
    return Split(
        train=tuple(i for i in range(len(labels)) if i not in val_set),
        val=tuple(sorted(val_set)),
        train_groups=len(members) - len(val_groups),
        val_groups=len(val_groups),
    )
