"""How much of a SpeechLLM's decoder is really needed: SLAM models, angular distances, pruning, healing."""

__version__ = "0.1.0"
