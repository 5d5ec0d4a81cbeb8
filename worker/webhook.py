"""The documented import path for webhook receivers (``from worker.webhook import SIGNATURE_HEADER, verify``);
signing lives in :mod:`producers.webhook` so a receiver needs only the torch-free base install."""

from producers.webhook import JOB_ID_HEADER, SIGNATURE_HEADER, sign, verify

__all__ = ["JOB_ID_HEADER", "SIGNATURE_HEADER", "sign", "verify"]
