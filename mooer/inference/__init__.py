"""Inference: a model loaded once (a Recognizer), batched decoding, long recordings cut where
silero-vad finds speech, transcripts written; `mooer-transcribe` and `mooer-serve`. Needs
neither Lightning nor DeepSpeed."""
