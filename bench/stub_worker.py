"""The real ``fakesake worker`` with a stub classifier: bench-only, never part of the product.

``python -m bench.stub_worker worker [fakesake worker options]`` runs exactly ``fakesake worker`` (settings,
the one builder, Celery app, slots, stores, ledger, telemetry) except that the builder's ``load_model`` returns
a detector whose ``predict`` answers 0.5 per input at once, so no weights are read and no model runs. Images are
still fetched, decoded and preprocessed by the real path. The bench's ``fleet`` section measures the queue
machinery's own per-job cost with it (``bench/fleet_section.py``); ``--processes N`` starts N of these (the
supervisor runs its children through this same module, see :data:`CHILD_MODULE`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from worker.service import loading

CHILD_MODULE = "bench.stub_worker"


class StubClassifier:
    """P(AI) = 0.5 for every input, at no cost."""

    def predict(self, batch: Sequence[Any]) -> list[float]:
        return [0.5] * len(batch)


def stub_model(settings: Any, **_: Any) -> loading.LoadedModel:
    """What ``loading.load_model`` returns for ``settings``, with :class:`StubClassifier` and no weights."""
    from worker.core import registry

    spec = registry.get(settings.model.name)
    decode = loading.cpu_decode(settings, spec, loading.decode_policy(settings, spec))  # what a CPU worker runs
    return loading.LoadedModel(spec, loading.thresholds(settings, spec), StubClassifier(), decode, "cpu")


def main(argv: list[str]) -> int:
    loading.load_model = stub_model  # type: ignore[assignment]  # the one swap this module exists for (load_models calls it)
    from worker.service import supervisor
    from worker.service.cli import main as cli_main

    supervisor.CHILD_COMMAND = [sys.executable, "-m", CHILD_MODULE]
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
