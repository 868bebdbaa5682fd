"""Datasets that ship offline: handwritten digits and the shapes world."""
