"""The OpenAPI document of the HTTP API, as committed in ``docs/openapi.json`` (a test keeps them equal).

Regenerate after changing a route or model: ``python3 -m api.openapi``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from api.settings import ApiGroup, ApiModelGroup, ApiSettings

PATH = Path(__file__).resolve().parents[1] / "docs" / "openapi.json"


def document() -> dict[str, Any]:
    """The document of an app with default ``api`` and ``model`` settings (the environment must not change the
    file)."""
    from api.app import create_app

    settings = ApiSettings().model_copy(update={"api": ApiGroup(), "model": ApiModelGroup()})
    schema: dict[str, Any] = create_app(settings).openapi()
    return schema


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    PATH.write_text(render())
    print(f"wrote {PATH}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
