"""Vectorised statistics over many features at once (no AnnData)."""
