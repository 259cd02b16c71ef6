"""Evaluation: weighted kNN and distributed feature extraction."""
