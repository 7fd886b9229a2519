"""Prompt sources and the synthetic movie-review corpus of the offline demo."""
