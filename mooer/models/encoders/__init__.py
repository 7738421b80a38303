"""Speech encoders: each maps (features [B, T, D], lengths [B]) to (states [B, T', H], lengths)."""
