"""The CVG-Text protocol: ``nearest_tiles`` (each query's 100 nearest tiles, exactly), ``ranking``
(chunked ranking under either protocol, and the metrics of a ranking), ``split`` (a split's
embeddings -> gallery, queries, ranking, metrics), ``metrics`` (the metrics of a similarity
matrix in one call) and ``geo`` (haversine distances)."""
