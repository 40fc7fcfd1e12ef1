"""Plumbing every room uses: ``errors`` (the errors a user can cause), ``atomic`` (writes that a
kill cannot truncate), ``checkpoints`` (safe reading and atomic writing of checkpoints),
``fingerprint`` (digests for caches), ``loggers`` (W&B), ``instantiate`` (config groups of
objects) and ``web`` (opening URLs)."""
