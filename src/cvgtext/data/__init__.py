"""The CVG-Text data layer: file-name coordinates, annotations, datasets and the datamodule."""
