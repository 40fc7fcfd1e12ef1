"""The embedded synthetic city: ``scene`` (the facts of one place), ``render`` (its satellite,
map and street-view pictures), ``captions`` (its panorama and single-view texts, written from
the same facts), ``city`` (generating a whole city in the release layout) and ``descriptions``
(further descriptions of its places, for measuring several descriptions of one place)."""
