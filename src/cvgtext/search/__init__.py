"""Searching a city's gallery: ``gallery`` (its tiles, their embeddings, the gallery index cached
on disk), ``calibration_store`` (the calibrations fitted for an index, kept beside it) and
``backends`` (exact search and faiss indexes over those embeddings)."""
