"""Offline demo material: a synthesized bilingual speech corpus."""
