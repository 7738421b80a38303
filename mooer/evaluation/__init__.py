"""Evaluation: scoring as MooER's compute-wer.py (WER/CER/MER), BLEU, the validation metric,
and `evaluate.py`'s per-set driver."""
