"""What a run leaves for people: ``results`` (metrics.json, predictions.csv, examples.png and the
printed tables, drawn by ``tables``), ``calibration`` (how far the confidence can be trusted:
its figures and two pictures), ``reproduce`` (the paper's Table 2 gathered from evaluation runs,
beside the published figures in ``data/``), ``locations`` (the query tool's locations.json /
.geojson / .png), ``maps`` (an answer's maps from the city's own tiles), ``answer_html`` (what
the page shows of an answer), ``explanations`` (relevance maps of retrieved pairs) and
``overlays`` (how relevance is drawn over tiles and words)."""
