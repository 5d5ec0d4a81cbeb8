"""A no-op Celery task on fakesake's own Celery configuration: the queue machinery's own limit per process.

The app takes :func:`worker.service.celery_app.celery_config` as it is (the same transport, lanes, acks_late,
prefetch, visibility timeout), and its one task, registered under ``TASK_NAME``, returns at once. It consumes
the producers' messages from the same lanes, so a bench run compares the real worker's jobs/s per process with
this on the same Redis, the same wire and the same pool (``bench/fleet_section.py``).

    FAKESAKE_REDIS__URL=redis://... celery -A bench.noop_worker worker --pool=threads -Q fakesake.interactive
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from producers.contract import TASK_NAME
from worker.service import celery_app
from worker.service.celery_app import celery_config
from worker.service.settings import WorkerSettings

# Importing the real app connects its start hook (build the runtime, load the model) to every worker's start.
signals.worker_init.disconnect(celery_app._load_at_start)

app = Celery("fakesake_noop", set_as_current=False)
app.conf.update(celery_config(WorkerSettings()))
# The real app's tasks are shared (Celery adds them to every app when it finalizes), and a name already
# registered is never replaced: finalize first, then put the no-op under the task's name.
app.finalize()
app.tasks.unregister(TASK_NAME)


@app.task(name=TASK_NAME, acks_late=True, shared=False)
def classify(payload: dict[str, Any], rate_reserved: list[str] | None = None) -> None:
    return None
