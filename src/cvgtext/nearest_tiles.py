"""The gallery entries nearest to each query place, exactly: the CVG-Text protocol's candidates.

The protocol ranks, for each query, the ``m`` gallery tiles nearest to its true place by
haversine distance (R = 6371 km), tiles at equal distances in gallery order. The search is
exact by construction: every distance that decides the set is a float64 haversine distance,
and a query's search box is proven to hold its nearest set before the set is taken.
"""

from __future__ import annotations

import math

import torch

from cvgtext.geo import EARTH_RADIUS_KM, haversine_radians_km

# Elements of one block of distances when finding the nearest entries.
_DISTANCE_BLOCK = 1 << 17
# A query's first search box holds about this many entries per nearest entry wanted.
_BOX_FILL = 1.8
# Height of a latitude strip, as a share of the first search radius.
_STRIP_HEIGHT = 0.5
# Relative slack covering the float64 rounding of a haversine distance (a few ulps in practice).
_DISTANCE_SLACK = 1e-9
# Degrees added to each side of a longitude range: more than the rounding of the strip keys.
_LONGITUDE_SLACK_DEG = 1e-6
_MAX_STRIPS = 1 << 16
_HALF_CIRCUMFERENCE_KM = math.pi * EARTH_RADIUS_KM


class _Strips:
    """Gallery entries in latitude strips of ``height`` degrees, sorted by (strip, longitude, index).

    ``key`` is ``strip + (lon + 180) / 361``, so a longitude range of one strip is a range of keys.
    """

    def __init__(self, lat: torch.Tensor, lon: torch.Tensor, height: float) -> None:
        self.south = float(lat.min())
        self.height = max(height, float(lat.max() - lat.min()) / _MAX_STRIPS, 1e-12)
        self.last = int((lat.max() - self.south) / self.height)
        self.key, self.order = (((lat - self.south) / self.height).floor() + (lon + 180) / 361).sort(stable=True)

    def box(self, lat: torch.Tensor, lon: torch.Tensor, radius_km: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Runs ``(start, length)  # [queries, strips]`` of sorted entries holding every entry within ``radius_km``.

        An entry outside lies farther: either its latitude differs by more than ``radius / R``
        radians, or, within that band, its longitude differs by more than the difference whose
        haversine term ``cos(lat1) cos(lat2) sin^2(dlon / 2)`` alone reaches the radius.
        """
        band = torch.rad2deg(radius_km / EARTH_RADIUS_KM)
        first = ((lat - band - self.south) / self.height).floor().clamp(0, self.last).long()
        last = ((lat + band - self.south) / self.height).floor().clamp(0, self.last).long()
        cosines = torch.deg2rad(lat).cos() * torch.deg2rad((lat.abs() + band).clamp(max=90)).cos()
        sine = torch.sin(radius_km / (2 * EARTH_RADIUS_KM)) / cosines.clamp(min=0).sqrt()
        half = torch.rad2deg(2 * torch.asin(sine.clamp(max=1))) * (1 + _DISTANCE_SLACK) + _LONGITUDE_SLACK_DEG
        whole = (sine >= 1) | (lon - half < -180) | (lon + half > 180) | (radius_km >= _HALF_CIRCUMFERENCE_KM)
        west = torch.where(whole, 0.0, (lon - half + 180) / 361)
        east = torch.where(whole, 360.5 / 361, (lon + half + 180) / 361)
        strip = first[:, None] + torch.arange(int((last - first).max()) + 1)  # [queries, strips]
        start = torch.searchsorted(self.key, strip + west[:, None])
        stop = torch.searchsorted(self.key, strip + east[:, None], right=True)
        return start, torch.where(strip <= last[:, None], stop - start, 0)


def nearest_entries(
    query_places: torch.Tensor, gallery_places: torch.Tensor, m: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``m`` gallery entries nearest to each query place, and their haversine distances.

    Returns ``[queries, m]`` entry indices (in no particular order) and distances in km, float64,
    on the CPU. The set is the first ``m`` of a stable sort by distance: of entries at the
    ``m``-th distance, those earliest in the gallery.

    Each query searches a box of latitude strips and a longitude range around its place, sized
    to hold about ``1.8 m`` entries, and takes exact haversine distances to everything in it.
    The box holds every entry within its radius, so when the ``m``-th distance found is below
    the radius, the nearest set is complete. Otherwise that distance bounds the true one, and
    a second box of that radius (a little more) holds the nearest set for certain.
    """
    lat, lon = gallery_places[:, 0], gallery_places[:, 1]
    gallery = lat.shape[0]
    if m >= gallery:
        raise ValueError(f"asked for the {m} nearest of {gallery} gallery entries")
    # A first radius whose square box holds enough entries if the gallery were spread evenly.
    extent_km = EARTH_RADIUS_KM * torch.deg2rad(gallery_places.amax(0) - gallery_places.amin(0))
    area = float(extent_km[0]) * float(extent_km[1]) * math.cos(math.radians(float(lat.abs().max())))
    radius_km = max(math.sqrt(max(area, 0.0) * _BOX_FILL * m / (4 * gallery)), 1e-6)
    strips = _Strips(lat, lon, math.degrees(radius_km / EARTH_RADIUS_KM) * _STRIP_HEIGHT)
    query_lat, query_lon = query_places[:, 0], query_places[:, 1]
    radius = torch.full_like(query_lat, radius_km)
    # Size each box by counting its entries (cheap): boxes far fuller than needed, in the dense
    # quarters of a city, shrink once; boxes short of entries grow until they hold enough.
    target = _BOX_FILL * m
    count = strips.box(query_lat, query_lon, radius)[1].sum(1)
    full = count > 3 * target
    radius[full] *= (target / count[full]).sqrt() * 1.05
    small = ((count < target) | full).nonzero().squeeze(1)
    while small.numel():
        count = strips.box(query_lat[small], query_lon[small], radius[small])[1].sum(1)
        grow = (count < target) & (radius[small] < _HALF_CIRCUMFERENCE_KM)
        small = small[grow]
        # The count grows about as the radius squared.
        radius[small] *= (target / count[grow].clamp(min=1)).sqrt().clamp(1.1, 4.0) * 1.05

    # Latitudes and longitudes in radians and the latitudes' cosines, in the strips' order.
    points = (torch.deg2rad(lat[strips.order]), torch.deg2rad(lon[strips.order]))
    points += (points[0].cos(),)
    entries = torch.empty(query_lat.shape[0], m, dtype=torch.long)
    distance_km = torch.empty(query_lat.shape[0], m, dtype=torch.float64)
    pending = torch.arange(query_lat.shape[0])
    while pending.numel():
        start, length = strips.box(query_lat[pending], query_lon[pending], radius[pending])
        # Rows in order of their box sizes, so that a block pads little.
        size, by_size = length.sum(1).sort()
        pending, start, length = pending[by_size], start[by_size], length[by_size]
        rows = max(1, _DISTANCE_BLOCK // max(m, int(size[-1])))
        unproven = []
        for first in range(0, len(size), rows):
            which = pending[first:first + rows]
            runs = slice(first, first + rows)
            found, found_km = _nearest_in_box(
                torch.deg2rad(query_places[which]), points, strips.order, start[runs], length[runs], m
            )
            kth_km, box_km = found_km.amax(1), radius[which]
            done = (kth_km < box_km * (1 - _DISTANCE_SLACK)) | (box_km >= _HALF_CIRCUMFERENCE_KM)
            if not done.all():
                # m entries lie within the m-th distance found: a box of that radius holds the nearest ones.
                again = ~done
                radius[which[again]] = torch.maximum(kth_km[again] * (1 + 4 * _DISTANCE_SLACK), box_km[again] * 1.01)
                unproven.append(which[again])
                which, found, found_km = which[done], found[done], found_km[done]
            entries.index_copy_(0, which, found)
            distance_km.index_copy_(0, which, found_km)
        pending = torch.cat(unproven) if unproven else pending[:0]
    return entries, distance_km


def _nearest_in_box(
    query: torch.Tensor,
    points: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    order: torch.Tensor,
    start: torch.Tensor,
    length: torch.Tensor,
    m: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``m`` nearest entries among the runs ``order[start : start + length]`` of each query, stably.

    ``query  # [queries, 2]`` in radians; ``points`` are the gallery's latitudes and longitudes
    in radians and the latitudes' cosines, in the order of ``order``.
    """
    gallery = order.shape[0]
    through = length.cumsum(1)  # [queries, runs] entries up to the end of each run
    width = max(m, int(through[:, -1].max()))
    # Column c of a row reads position start + c within a run; where a run ends, the position
    # jumps to the next run's start (several jumps add up where runs are empty).
    step = torch.ones(through.shape[0], width + 1, dtype=torch.long)
    step.scatter_add_(1, through[:, :-1], start[:, 1:] - start[:, :-1] - length[:, :-1])
    position = (step[:, :width].cumsum(1) + (start[:, :1] - 1)).clamp_(0, gallery - 1)
    valid = torch.arange(width) < through[:, -1:]
    lat, lon, cos_lat = (_take(values, position) for values in points)
    query_lat, query_lon = query[:, :1], query[:, 1:]
    distance_km = haversine_radians_km(query_lat, query_lon, query_lat.cos(), lat, lon, cos_lat)
    distance_km = distance_km.masked_fill(~valid, math.inf)  # padding is infinitely far
    kth_km, nearest = distance_km.topk(m, dim=1, largest=False, sorted=False)
    kth_km = kth_km.amax(1, keepdim=True)
    ties = ((distance_km <= kth_km).sum(1) > m).nonzero().squeeze(1)
    if ties.numel():  # more entries at the m-th distance than places left: the earliest entries first
        nearest[ties] = _earliest_at_boundary(distance_km[ties], _take(order, position[ties]), kth_km[ties], m)
    return _take(order, position.gather(1, nearest)), distance_km.gather(1, nearest)


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[index]`` for a 1-D ``values`` (``index_select`` is much faster than indexing on the CPU)."""
    return values.index_select(0, index.reshape(-1)).view(index.shape)


def _earliest_at_boundary(distance_km: torch.Tensor, entry: torch.Tensor, kth_km: torch.Tensor, m: int) -> torch.Tensor:
    """``[rows, m]`` columns of the entries nearer than ``kth_km`` and the earliest entries at it."""
    closer, tied = distance_km < kth_km, distance_km == kth_km
    wanted = m - closer.sum(1, keepdim=True)
    # Padding (infinitely far) gets distinct indices past the gallery's, so that exactly m are chosen.
    padding = torch.iinfo(torch.int32).max + torch.arange(entry.shape[1])
    entry = torch.where(distance_km == math.inf, padding, entry)
    by_index = entry.masked_fill(~tied, torch.iinfo(torch.long).max).sort(dim=1).values
    chosen = closer | (tied & (entry <= by_index.gather(1, wanted - 1)))
    return chosen.nonzero()[:, 1].view(-1, m)
