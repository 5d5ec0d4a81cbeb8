"""The model card's usage as a script: ``python -m bench.card_script WEIGHTS IMAGE...`` prints one P(AI) a line.

What a user of the card runs end to end (imports torch, timm and torchvision, builds the module, loads the
state_dict, then ``pipe(Image.open(path))`` per file): the baseline of the start-up rows of ``python -m bench``.
The pipeline itself is :class:`tests.support.card.CardPipeline`, written from the card and not from our code.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from tests.support.card import CardPipeline
from worker.core import registry


def main(argv: list[str]) -> int:
    weights, *files = argv
    pipe = CardPipeline(Path(weights), registry.get("ffs-mj-5m"))
    for path in files:
        print(path, pipe(Image.open(path))[0]["score"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
