"""Generate the settings reference (a markdown table) from the settings classes.

``python -m worker.service.settings_doc`` prints the table; ``--write`` regenerates it between the markers in
``docs/SETTINGS.md`` (and in ``README.md`` when that file carries the markers); ``--check`` exits 1 when a
file is out of date. ``tests/unit/test_settings_doc.py`` fails when a settings class changes and the docs
were not regenerated. :func:`env_var_names` is also what the deploy tests use to reject unknown
``FAKESAKE_*`` variables in compose and Kubernetes files.
"""

from __future__ import annotations

import argparse
import sys
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from api.settings import ApiSettings
from producers.settings import ENV_PREFIX, ProducerSettings
from worker.service.settings import WorkerSettings

START = "<!-- settings:start -->"
END = "<!-- settings:end -->"
REPO = Path(__file__).resolve().parents[2]
DOC_FILES = (REPO / "docs" / "SETTINGS.md", REPO / "README.md")
DELIMITER = "__"

#: The processes documented, in table order: (column label, settings class).
PROCESSES: tuple[tuple[str, type[BaseSettings]], ...] = (
    ("worker", WorkerSettings),
    ("producer", ProducerSettings),
    ("api", ApiSettings),
)


@dataclass(frozen=True)
class SettingRow:
    env: str
    type: str
    default: str
    description: str


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(str(a) for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in get_args(annotation))
    if origin is list:
        (item,) = get_args(annotation)
        return f"{_type_name(item)} list (comma-separated)"
    if annotation is type(None):
        return "unset"
    if annotation is SecretStr:
        return "secret"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(info: FieldInfo) -> str:
    marks = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))
    parts: list[str] = []
    for meta in info.metadata:
        if isinstance(meta, annotated_types.BaseMetadata):
            parts.extend(f"{sign} {getattr(meta, attr)}" for attr, sign in marks if hasattr(meta, attr))
    return f" ({', '.join(parts)})" if parts else ""


def _default(info: FieldInfo) -> str:
    if info.default is not PydanticUndefined:
        value = info.default
    elif info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    else:
        return "*(required)*"
    if value is None:
        return "*(unset)*"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return f"`{','.join(map(str, value))}`" if value else "*(empty)*"
    return f"`{value}`" if str(value) else '`""`'


def iter_settings(model: type[BaseModel], prefix: str = ENV_PREFIX) -> Iterator[SettingRow]:
    """Every leaf setting of ``model`` as its environment variable, recursing into nested groups."""
    for name, info in model.model_fields.items():
        env = f"{prefix}{name}".upper()
        group = info.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            yield from iter_settings(group, f"{env}{DELIMITER}")
            continue
        description = (info.description or "").replace("|", "\\|").replace("\n", " ")
        yield SettingRow(env, _type_name(info.annotation) + _bounds(info), _default(info), description)


def env_var_names(*models: type[BaseModel]) -> set[str]:
    """The ``FAKESAKE_*`` names the given classes read (default: every process's)."""
    models = models or tuple(cls for _, cls in PROCESSES)
    return {row.env for model in models for row in iter_settings(model)}


def render_table() -> str:
    """One table; a variable read by several processes appears once, with each process named."""
    rows: dict[str, tuple[SettingRow, list[str]]] = {}
    for process, cls in PROCESSES:
        for row in iter_settings(cls):
            rows.setdefault(row.env, (row, []))[1].append(process)
    lines = ["| Variable | Used by | Type | Default | Description |", "|---|---|---|---|---|"]
    for row, used_by in rows.values():
        lines.append(f"| `{row.env}` | {', '.join(used_by)} | {row.type} | {row.default} | {row.description} |")
    return "\n".join(lines) + "\n"


def splice(text: str, table: str) -> str:
    """``text`` with the part between the markers replaced by ``table``."""
    head, sep, rest = text.partition(START)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise ValueError(f"markers {START} ... {END} not found")
    return f"{head}{START}\n{table}{END}{tail}"


def stale_files(table: str, files: Sequence[Path] = DOC_FILES) -> list[Path]:
    """Files whose marked section differs from ``table`` (README.md may lack markers; SETTINGS.md may not)."""
    stale = []
    for path in files:
        if not path.exists() or START not in path.read_text():
            if path.name == "SETTINGS.md":
                stale.append(path)
            continue
        text = path.read_text()
        if splice(text, table) != text:
            stale.append(path)
    return stale


_SETTINGS_MD = """# fakesake settings

Every setting is an environment variable with the prefix `FAKESAKE_`; nested groups use `__`
(`FAKESAKE_REDIS__URL`). Lists are comma-separated. Secrets (`secret`) are never logged.
Generated from `worker/service/settings.py` and `producers/settings.py` by
`python -m worker.service.settings_doc --write`;
`tests/unit/test_settings_doc.py` fails when this file is out of date. Do not edit the table by hand.

"""


def write(table: str, files: Sequence[Path] = DOC_FILES) -> list[Path]:
    """Regenerate the marked section of each file (creating docs/SETTINGS.md if needed)."""
    written = []
    for path in files:
        if path.name == "SETTINGS.md" and (not path.exists() or START not in path.read_text()):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{_SETTINGS_MD}{START}\n{END}\n")
        if not path.exists() or START not in path.read_text():
            continue
        text = path.read_text()
        new = splice(text, table)
        if new != text:
            path.write_text(new)
            written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.service.settings_doc", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="regenerate docs/SETTINGS.md (and README.md markers)")
    mode.add_argument("--check", action="store_true", help="exit 1 if a generated section is out of date")
    args = parser.parse_args(argv)
    table = render_table()
    if args.write:
        for path in write(table):
            print(f"updated {path}", file=sys.stderr)
        return 0
    if args.check:
        stale = stale_files(table)
        for path in stale:
            print(f"out of date: {path} (run python -m worker.service.settings_doc --write)", file=sys.stderr)
        return 1 if stale else 0
    sys.stdout.write(table)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
