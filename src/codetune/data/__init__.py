"""Data stage: sources -> Example records -> cleaned, deduplicated, split JSONL."""

from codetune.data.prepare import prepare

__all__ = ["prepare"]
