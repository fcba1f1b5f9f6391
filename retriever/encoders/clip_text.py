"""CLIP's text tower run only up to the batch's last real token.

CLIP's text tower pads every query to its context length (77 tokens) though a query is
usually under 15. With a causal attention mask and the pooled feature taken at the
end-of-text token, no position after that token can change the result, so the tower may run
on the first ``max(length)`` positions only: 2-3x faster queries on a CPU, same vectors up to
rounding. Used only for open_clip's own ``CLIP`` text tower with its simple tokenizer (pad id
0), and only where a check agreed with the full-length path. The check runs two full 77-token
passes, so its result is kept with the cached weights (``retriever.encoders.weight_cache``)
and a later load reuses it instead of running it again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["PROBE_TEXTS", "trimmed_text_encoder"]

PROBE_TEXTS = ("a photo of a dog", "a red circle on a blue square background")
_MIN_COSINE = 0.999


def trimmed_text_encoder(
    model: Any, tokenizer: Any, verified: bool | None = None
) -> tuple[Callable[[Any], Any] | None, bool]:
    """``(encode, matched)``: ``encode`` maps tokens to features on the trimmed path, or is None where
    that path does not apply or did not match; ``matched`` is the check's result (``verified``, a
    result known from an earlier load, skips the check)."""
    if not _applies(model, tokenizer):
        return None, False
    encode = _trimmed(model)
    matched = _matches_full_length(model, tokenizer, encode) if verified is None else verified
    return (encode if matched else None), matched


def _applies(model: Any, tokenizer: Any) -> bool:
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    return (
        isinstance(model, CLIP)
        and isinstance(tokenizer, SimpleTokenizer)
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) == "argmax"
    )


def _trimmed(model: Any) -> Callable[[Any], Any]:
    import torch
    from open_clip.transformer import text_global_pool

    def encode(tokens: Any) -> Any:
        length = max(int((tokens != 0).sum(dim=1).max()), 1)
        text = tokens[:, :length]
        cast = model.transformer.get_cast_dtype()
        x = model.token_embedding(text).to(cast) + model.positional_embedding[:length].to(cast)
        x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
        x = text_global_pool(model.ln_final(x), text, "argmax")
        proj = model.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, torch.nn.Module) else x @ proj

    return encode


def _matches_full_length(model: Any, tokenizer: Any, encode: Callable[[Any], Any]) -> bool:
    import torch

    probe = tokenizer(list(PROBE_TEXTS))
    with torch.inference_mode():
        probe = probe.to(next(model.parameters()).device)
        full = torch.nn.functional.normalize(model.encode_text(probe).float(), dim=-1)
        short = torch.nn.functional.normalize(encode(probe).float(), dim=-1)
    return float((full * short).sum(dim=-1).min()) >= _MIN_COSINE
