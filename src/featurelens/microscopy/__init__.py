"""Microscopy adapter: image embeddings and profiles as AnnData."""
