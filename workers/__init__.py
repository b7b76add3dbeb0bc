"""Temporal workers: `python -m workers --queue cpu|gpu`."""
