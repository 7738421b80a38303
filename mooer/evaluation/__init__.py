"""Evaluation: batched decoding to Kaldi-style text files and WER/CER/BLEU scoring."""
