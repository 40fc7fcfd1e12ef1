"""The CVG-Text protocol and what is measured of a ranking: ``nearest_tiles`` (each query's 100
nearest tiles, exactly), ``ranking`` (chunked ranking under either protocol, and the metrics),
``split`` (a split's embeddings -> gallery, queries, ranking, metrics), ``pairs`` (a split ranked
by a pair scorer), ``metrics`` (the metrics of a similarity matrix in one call), ``bootstrap``
(intervals of the metrics), ``calibration`` (the probability that an answer is right, and its
80 % area), ``reliability`` (whether stated confidences hold: ECE, Brier, risk-coverage) and
``geo`` (haversine distances)."""
