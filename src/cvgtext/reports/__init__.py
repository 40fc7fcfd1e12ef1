"""What a run leaves for people: ``results`` (metrics.json, predictions.csv, examples.png and the
printed table), ``locations`` (the query tool's locations.json / .geojson / .png),
``explanations`` (relevance maps of retrieved pairs for those pictures) and ``overlays`` (how
relevance is drawn over tiles and words)."""
