"""The data layer: file-name coordinates (``names``), annotations, datasets and the datamodule
with its two sources (``folders``, ``shards/``), samplers, image checks, the decoded-tile cache,
decoding on the device; ``synthetic/`` (the embedded city), ``release/`` (getting and checking
the CVG-Text release) and ``town/`` (building a town of one's own)."""
