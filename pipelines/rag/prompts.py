"""The grounded-answer prompt: a template users can override.

A template is plain text with two placeholders, ``{question}`` and ``{evidence}``.
Only these two are substituted (other braces stay as they are), so a template may
contain JSON examples. ``{evidence}`` marks where the numbered evidence goes; for
backends that take images, the image parts are inserted at that place, each right
after its ``[n]`` label.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.rag.evidence import Evidence
from retriever.errors import ConfigError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = [
    "DEFAULT_PROMPT",
    "NOT_FOUND_TEXT",
    "build_parts",
    "image_data_url",
    "render_evidence",
    "resolve_template",
    "split_template",
]

log = logging.getLogger(__name__)

NOT_FOUND_TEXT = "Not found in the indexed data."

DEFAULT_PROMPT = """\
You answer questions using only the numbered evidence below, taken from the user's \
indexed files (documents, PDF pages, transcripts of audio and video, images).

Rules:
- Use only what the evidence states or shows. Do not add outside knowledge.
- End every sentence that states a fact with the number(s) of the evidence that supports \
it in square brackets, for example [1] or [2][3].
- Cite only numbers that appear in the evidence list.
- If the evidence does not answer the question, reply exactly: "<NOT_FOUND>"
- Be concise.

Evidence:
{evidence}

Question: {question}
Answer:""".replace("<NOT_FOUND>", NOT_FOUND_TEXT)

_PLACEHOLDERS = ("{question}", "{evidence}")


def resolve_template(prompt: str | None, configured: str | None = None) -> str:
    """The template to use: the argument, else the configured one, else the default.

    A value that contains ``{question}`` is a template itself; any other value is
    read as the path of a template file.
    """
    value = prompt if prompt is not None else configured
    if value is None:
        return DEFAULT_PROMPT
    if "{question}" not in value:
        path = Path(value).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"prompt template {value[:80]!r} is neither a template containing "
                "{question} and {evidence} nor the path of a template file"
            )
        try:
            value = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read prompt template file {path}: {exc}") from exc
    _validate(value)
    return value


def _validate(template: str) -> None:
    for placeholder in _PLACEHOLDERS:
        count = template.count(placeholder)
        if count != 1:
            raise ConfigError(f"prompt template must contain {placeholder} exactly once (found {count})")


def split_template(template: str, question: str) -> tuple[str, str]:
    """Render ``{question}`` and split at ``{evidence}``: (text before, text after)."""
    _validate(template)
    before, after = template.split("{evidence}")
    return before.replace("{question}", question), after.replace("{question}", question)


# ---- evidence -> message content --------------------------------------------------------

_CAPTION_KEYS = ("caption", "alt", "title", "description")


def render_evidence(ev: Evidence, max_chars: int) -> str:
    """The text block of one evidence item: ``[n] citation (what it is)`` and its text."""
    hit = ev.hit
    what = f"{hit.modality.value} {hit.kind}".strip()
    if ev.as_image:
        what += ", image attached below"
    lines = [f"[{ev.n}] {hit.citation} ({what})"]
    caption = next((str(hit.metadata[k]) for k in _CAPTION_KEYS if hit.metadata.get(k)), None)
    if caption:
        lines.append(f"Caption: {caption}")
    text = " ".join((hit.text or "").split())
    if text:
        if len(text) > max_chars:
            text = text[: max_chars - 3].rstrip() + "..."
        lines.append(text)
    elif not ev.as_image and not caption:
        lines.append("(an image without text; not shown to this model)")
    return "\n".join(lines)


def build_parts(
    template: str,
    question: str,
    evidence: Sequence[Evidence],
    images: Mapping[int, str],
    max_chars: int,
) -> list[dict[str, Any]]:
    """One user message as OpenAI-style content parts: text, with image parts in place.

    Each image part follows the text block of its ``[n]``; consecutive text is merged.
    """
    before, after = split_template(template, question)
    parts: list[dict[str, Any]] = []
    buffer = [before.rstrip("\n") + "\n"]
    for ev in evidence:
        buffer.append(render_evidence(ev, max_chars) + "\n")
        if ev.n in images:
            parts.append({"type": "text", "text": "\n".join(buffer)})
            parts.append({"type": "image_url", "image_url": {"url": images[ev.n]}})
            buffer = []
    buffer.append(after.lstrip("\n"))
    parts.append({"type": "text", "text": "\n".join(buffer)})
    return parts


def image_data_url(path: str, max_px: int) -> str | None:
    """The image at ``path`` downscaled to ``max_px`` (longest side) as a JPEG data URL.

    Returns None (and logs why) when the file cannot be read as an image, so the
    evidence falls back to its text.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as opened:
            opened.draft("RGB", (max_px, max_px))  # JPEG: decode at a reduced scale
            image = _on_white(ImageOps.exif_transpose(opened))
            image.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            image.save(buf, "JPEG", quality=85)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        log.warning("image evidence %s not usable, sending its text instead: %s", path, exc)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _on_white(image: PILImage) -> PILImage:
    """``image`` as RGB, transparent parts on a white background."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, "white")
        image.paste(rgba, mask=rgba.split()[-1])
    return image.convert("RGB")
