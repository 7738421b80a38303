"""Models: speech encoders, the projector, the LLM and the SpeechLLM that joins them."""
