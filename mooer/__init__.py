"""mooer: LLM-based speech recognition and translation, trained with Lightning and Hydra."""

__version__ = "0.1.0"
