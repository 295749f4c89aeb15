"""Ingest: decode what phones send, validate it, and feed the pipeline."""
