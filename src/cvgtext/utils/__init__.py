"""Plumbing every room uses: ``errors`` (the errors a user can cause), ``atomic`` (writes that a
kill cannot truncate), ``checkpoints`` (safe reading and atomic writing of checkpoints),
``fingerprint`` (digests for caches), ``locks`` (one lock per cache key), ``loggers`` (W&B),
``library_messages`` (the libraries' lines that would be untrue or said twice, kept back),
``instantiate`` (config groups of objects), ``chat`` (an OpenAI-compatible chat-completions
client) and ``web`` (opening URLs)."""
