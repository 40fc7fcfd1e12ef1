"""Making a town of one's own in the release layout: the paper's dataset construction.

From a list of places (points, streets of an OpenStreetMap extract, or the street views
themselves) to ``annotation/<Town>[-photos]/{train,test}.json`` with satellite and map tiles
centred on each street-view point and captions written by a multimodal model in the paper's
progressive order. One concern per module:

- ``places``: where the places are, and a minimum spacing between them;
- ``mercator``: Web Mercator pixel arithmetic, stitching tiles and cropping them on a point;
- ``http``: polite requests to tile and street-view services (User-Agent, pace, retries);
- ``tile_sources``: XYZ services (with a local cache), MBTiles and PMTiles files;
- ``street_views``: a folder of the user's images, or a service behind a small interface;
- ``ocr``: scene text read offline (RapidOCR), text on vehicles left out;
- ``segmentation``: an optional summary of what the scene shows, by direction;
- ``captions``: the producer prompt, format filtering and the inspector;
- ``splits``: a spatial block split that keeps test places away from training places;
- ``statistics``: the captions' statistics beside the paper's;
- ``build``: the places built one by one, resumable after a kill at any moment;
- ``manifest``: the split, the annotation files and the manifest, written at the end of each run.
"""
