"""Grounded generation: evidence pack -> prompt (text + images) -> LLM -> answer with checked citations."""
