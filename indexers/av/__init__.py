"""Audio and video: decoding (PyAV), speech to text with timestamps, keyframes, and their ingestors."""
