"""fakesake benchmark suite: ``python -m bench [--quick] [--only NAME] [--out bench/results]``.

Sections (each a module with ``run(ctx) -> list[Row]``): ``engine`` (engine vs the model card's pipeline,
and vs the ideal bound), ``queue`` (Redis + a real Celery worker vs in-process, and vs a naive Celery
worker), ``latency``, ``producer`` (enqueue rate, Redis bytes per queued job), ``knobs`` (batch size, max
wait, prepare threads, preprocessing mode, CPU inference backend), ``gpu``. Speed only: models carry the
tests' seeded random weights (weights do not change speed; score deltas are indicative only).

Every figure is a median of repeated passes, and every ratio compares two things measured in the same run,
interleaved pass by pass, because the dev machines are shared and noisy.
"""
