"""Data: conversations from JSONL (records), LIMA's chat tokenization (tokenizer), the TFDS
builder for LIMA and the user's data (lima), fixed-shape packed batches (batches), and the demo
set shipped in the package (demo/), so `--config=tiny` runs without a download.

The heavy modules (TFDS) are imported by their users, not here.
"""
from __future__ import annotations

import pathlib


def demo_dir() -> pathlib.Path:
    """The shipped demo: train.jsonl (LIMA format) and tokenizer.model (512 pieces)."""
    return pathlib.Path(__file__).resolve().parent / "demo"
