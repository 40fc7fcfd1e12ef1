"""WebDataset shards of a city: ``write`` packs them (``pack.py``), ``read`` streams them back,
``source`` gives them to the datamodule as a source of pairs (``data.format=shards``)."""
