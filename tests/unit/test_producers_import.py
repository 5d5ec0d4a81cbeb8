"""The producer side stays light: importing it must not import torch (or timm)."""

from __future__ import annotations

import subprocess
import sys


def test_producers_do_not_import_torch() -> None:
    code = (
        "import producers, producers.client, producers.cli, producers.wire, producers.enumerate; "
        "import producers.output; "
        "import worker.stores.results, worker.stores.ratelimit, producers.dlq, producers.webhook; import sys; "
        "bad = sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules); "
        "assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
