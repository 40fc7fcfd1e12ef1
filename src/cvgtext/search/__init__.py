"""Searching a city's gallery: ``gallery`` (its tiles, their embeddings, the gallery index cached
on disk) and ``backends`` (exact search and faiss indexes over those embeddings)."""
