"""Audio and video: ``decode`` streams audio and frames through PyAV, ``transcribe`` turns speech
into timed text (the ``SpeechToText`` protocol and the faster-whisper ``Transcriber``),
``keyframes`` picks frames at shot changes, and ``audio`` / ``video`` are the ingestors that
make transcript windows and keyframes carrying the speech around them."""
