"""Data: text normalization, audio I/O, shard packing, features, prompts and the DataModule."""
