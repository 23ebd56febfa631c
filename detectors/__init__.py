"""Detectors: pure, river-style scorers (`learn_one`, `score_one`) over feature dicts."""
