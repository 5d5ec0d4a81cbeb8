"""Generator metadata: the marks image generators write into their own files. Pure apart from Pillow's EXIF parser.

Each rule looks at one key and reports the tool and the key; the prompt only when asked (``include_prompts``),
because prompts can hold personal data. What it proves: the file was written by that tool (or by someone
copying its format); what it does not: its absence proves nothing, since any re-save or upload strips it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from worker.core.evidence import Entry

MAX_PROMPT_CHARS = 2000
# EXIF Software values of tools that only generate (a camera or an editor never writes these).
KNOWN_SOFTWARE = {
    "novelai": "novelai",
    "midjourney": "midjourney",
    "dall-e": "dall-e",
    "dall·e": "dall-e",
    "stable diffusion": "stable-diffusion",
    "comfyui": "comfyui",
    "invokeai": "invokeai",
    "automatic1111": "automatic1111",
    "fooocus": "fooocus",
    "flux": "flux",
}


def _json(value: str) -> Any:
    if not value.lstrip().startswith(("{", "[")):
        return None
    try:
        return json.loads(value)
    except ValueError:
        return None


def _a1111_prompt(text: str) -> str:
    """The positive prompt of an A1111/Forge ``parameters`` text: everything before its settings lines."""
    for marker in ("\nNegative prompt:", "\nSteps:"):
        text = text.split(marker, 1)[0]
    return text.strip()


def _parameters(value: str) -> tuple[str, str | None] | None:
    data = _json(value)
    if isinstance(data, dict):
        if any("fooocus" in str(v).lower() for v in data.values()) or "fooocus" in value[:4000].lower():
            return "fooocus", data.get("prompt") or data.get("Prompt")
        return None
    if "Steps:" in value:
        tool = "forge" if "Version: f" in value else "automatic1111"
        return tool, _a1111_prompt(value)
    return None


def _comfy(key: str, value: str) -> tuple[str, str | None] | None:
    data = _json(value)
    if (
        key == "prompt"
        and isinstance(data, dict)
        and any(isinstance(v, dict) and "class_type" in v for v in data.values())
    ):
        texts = [
            n["inputs"]["text"]
            for n in data.values()
            if isinstance(n, dict) and isinstance(n.get("inputs"), dict) and isinstance(n["inputs"].get("text"), str)
        ]
        return "comfyui", "\n".join(texts) or None
    if key == "workflow" and isinstance(data, dict) and "nodes" in data:
        return "comfyui", None
    return None


def _text_rule(key: str, value: str) -> tuple[str, str | None] | None:
    """(tool, prompt) for one PNG text chunk, or None when it is not a generator's mark."""
    if key == "parameters":
        return _parameters(value)
    if key in ("prompt", "workflow"):
        return _comfy(key, value)
    if key in ("invokeai_metadata", "invokeai_graph", "sd-metadata", "Dream"):
        data = _json(value)
        prompt = data.get("positive_prompt") or data.get("prompt") if isinstance(data, dict) else None
        if key == "Dream":
            prompt = value.split('"', 2)[1] if value.count('"') >= 2 else None
        return "invokeai", prompt if isinstance(prompt, str) else None
    if key == "Software" and value.strip().lower().startswith("novelai"):
        return "novelai", None
    if key == "Comment":
        data = _json(value)
        if isinstance(data, dict) and "prompt" in data and ("sampler" in data or "steps" in data):
            return "novelai", data["prompt"] if isinstance(data["prompt"], str) else None
    if key == "Description" and "Job ID:" in value:
        return "midjourney", value.split("Job ID:", 1)[0].strip() or None
    return None


def from_text(chunks: Iterable[tuple[str, str]], include_prompts: bool) -> list[Entry]:
    """Entries for PNG text chunks (one per tool and key)."""
    entries: list[Entry] = []
    seen: set[tuple[str, str]] = set()
    for key, value in chunks:
        hit = _text_rule(key, value)
        if hit is None or (hit[0], key) in seen:
            continue
        seen.add((hit[0], key))
        entries.append(_entry(hit[0], key, hit[1], include_prompts))
    return entries


def from_exif(software: str | None, user_comment: str | None, include_prompts: bool) -> list[Entry]:
    """Entries for EXIF Software (a known generator's name) and UserComment (A1111/Forge parameters)."""
    entries: list[Entry] = []
    if software:
        lowered = software.strip().lower()
        tool = next((t for name, t in KNOWN_SOFTWARE.items() if lowered.startswith(name)), None)
        if tool:
            entries.append(_entry(tool, "Software", None, include_prompts))
    if user_comment:
        hit = _parameters(user_comment)
        if hit is not None:
            entries.append(_entry(hit[0], "UserComment", hit[1], include_prompts))
    return entries


def _entry(tool: str, key: str, prompt: str | None, include_prompts: bool) -> Entry:
    entry: Entry = {"kind": "generator-metadata", "tool": tool, "key": key}
    if include_prompts and prompt:
        entry["prompt"] = prompt[:MAX_PROMPT_CHARS]
    return entry


def exif_strings(block: bytes) -> tuple[str | None, str | None]:
    """(Software, UserComment) of one TIFF-headed EXIF block, via Pillow's parser (raises on garbage)."""
    from PIL import Image

    exif = Image.Exif()
    exif.load(b"Exif\x00\x00" + block)
    software = exif.get(0x0131)
    comment = exif.get_ifd(0x8769).get(0x9286)
    return (str(software) if software else None), _user_comment(comment)


def _user_comment(value: Any) -> str | None:
    """EXIF UserComment: an 8-byte charset header, then the text (A1111 writes ``UNICODE`` + UTF-16)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, bytes) or len(value) < 8:
        return None
    head, body = value[:8], value[8:]
    if head.startswith(b"UNICODE"):
        encoding = "utf-16-le" if body[:1] != b"\x00" and body[1:2] == b"\x00" else "utf-16-be"
        return body.decode(encoding, "replace")
    return body.decode("utf-8", "replace")
