"""The gallery entries nearest to each query place, exactly: the CVG-Text protocol's candidates.

The protocol ranks, for each query, the ``m`` gallery tiles nearest to its true place by
haversine distance (R = 6371 km), tiles at equal distances in gallery order. The search is
exact by construction: every comparison that decides the set is between float64 haversines of
central angles (``sin^2(d / 2R)``, which order places as their distances do), and a query's
search box is proven to hold its nearest set before the set is taken.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy
import torch

from cvgtext.retrieval.geo import EARTH_RADIUS_KM, km_of_haversine

# Elements of one block of distances when finding the nearest entries (a block stays in cache).
_DISTANCE_BLOCK = 1 << 17
# A query's search box holds about this many entries per nearest entry wanted.
_BOX_FILL = 1.8
# Height of a latitude strip, as a share of the first search radius.
_STRIP_HEIGHT = 0.5
# Slack covering the float64 rounding of a distance: relative (a few ulps in practice), and
# absolute in km (the rounding of the half-angle sines, about 1e-16 each, times 2R).
_DISTANCE_SLACK = 1e-9
_DISTANCE_SLACK_KM = 1e-9
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
    """The ``m`` gallery entries nearest to each query place, and how near they are.

    Returns ``[queries, m]`` entry indices (in no particular order) and their haversines of the
    central angle, ``sin^2(d / 2R)`` (float64, ordered as the distances ``d`` are), on the CPU.
    The set is the first ``m`` of a stable sort by distance: of entries at the ``m``-th
    distance, those earliest in the gallery.

    Each query searches a box of latitude strips and a longitude range around its place, sized
    to hold about ``1.8 m`` entries, and takes exact distances to everything in it. The box holds
    every entry within its radius, so when the ``m``-th distance found is below the radius, the
    nearest set is complete. Otherwise that distance bounds the true one, and a second box of
    that radius (a little more) holds the nearest set for certain.
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
    # Each box is sized by counting its entries at the first radius (cheap): the count grows
    # about as the radius squared.
    count = strips.box(query_lat, query_lon, torch.full_like(query_lat, radius_km))[1].sum(1)
    radius = radius_km * (_BOX_FILL * m / count.clamp(min=1).double()).sqrt().clamp(max=4.0) * 1.05

    points = _half_angles(gallery_places[strips.order]).unbind(1)  # in the strips' order
    query_points = _half_angles(query_places)
    entries = torch.empty(query_lat.shape[0], m, dtype=torch.long)
    nearness = torch.empty(query_lat.shape[0], m, dtype=torch.float64)
    pending = torch.arange(query_lat.shape[0])
    workspace = torch.empty(6, _DISTANCE_BLOCK, dtype=torch.float64)
    while pending.numel():
        start, length = strips.box(query_lat[pending], query_lon[pending], radius[pending])
        # Rows in order of their box sizes, in blocks of similar widths.
        size, by_size = length.sum(1).sort()
        pending, start, length = pending[by_size], start[by_size], length[by_size]
        unproven = []
        for first, stop in _blocks(size.clamp(min=m).tolist()):
            which, runs = pending[first:stop], slice(first, stop)
            found, found_term, kth_term = _nearest_in_box(
                query_points[which], points, strips.order, start[runs], length[runs], m, workspace
            )
            kth_km, box_km = km_of_haversine(kth_term), radius[which]
            done = kth_km < box_km * (1 - _DISTANCE_SLACK) - _DISTANCE_SLACK_KM
            done |= box_km >= _HALF_CIRCUMFERENCE_KM
            if not done.all():
                # m entries lie within the m-th distance found: a box of that radius holds the
                # nearest ones. A box holding fewer than m entries (no m-th distance) doubles.
                again = ~done
                radius[which[again]] = torch.where(
                    kth_term[again].isinf(),
                    box_km[again] * 2,
                    torch.maximum(
                        kth_km[again] * (1 + 4 * _DISTANCE_SLACK) + 2 * _DISTANCE_SLACK_KM, box_km[again] * 1.01
                    ),
                )
                unproven.append(which[again])
                which, found, found_term = which[done], found[done], found_term[done]
            entries.index_copy_(0, which, found)
            nearness.index_copy_(0, which, found_term)
        pending = torch.cat(unproven) if unproven else pending[:0]
    return entries, nearness


def _blocks(widths: list[int]) -> Iterator[tuple[int, int]]:
    """``(first, stop)`` runs of rows of ascending ``widths``, each as many rows as fit
    ``_DISTANCE_BLOCK`` elements at the width of its widest (last) row, and at least one."""
    first = 0
    while first < len(widths):
        # The rows that would fit at the first row's width; then as many as fit at the widest of those.
        guess = min(len(widths), first + max(1, _DISTANCE_BLOCK // widths[first])) - 1
        stop = min(len(widths), first + max(1, _DISTANCE_BLOCK // widths[guess]))
        yield first, stop
        first = stop


def _half_angles(places: torch.Tensor) -> torch.Tensor:
    """``[n, 5]`` float64 of ``[n, 2]`` places in degrees: the sine and cosine of half the latitude
    and of half the longitude, and the cosine of the latitude."""
    lat, lon = torch.deg2rad(places[:, 0]), torch.deg2rad(places[:, 1])
    return torch.stack([(lat / 2).sin(), (lat / 2).cos(), (lon / 2).sin(), (lon / 2).cos(), lat.cos()], 1)


def _nearest_in_box(
    query: torch.Tensor,
    points: tuple[torch.Tensor, ...],
    order: torch.Tensor,
    start: torch.Tensor,
    length: torch.Tensor,
    m: int,
    workspace: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``m`` nearest entries among the runs ``order[start : start + length]`` of each query, stably.

    ``query  # [queries, 5]`` and ``points`` (five ``[gallery]`` columns, in the order of ``order``)
    are :func:`_half_angles`. ``workspace`` holds six float64 buffers reused from block to block:
    fresh large buffers cost page faults, about a fifth of the search. Returns the entries,
    their haversines and each row's ``m``-th smallest haversine (infinite where the runs hold
    fewer than ``m`` entries).
    """
    gallery = order.shape[0]
    through = length.cumsum(1)  # [queries, runs] entries up to the end of each run
    width = max(m, int(through[:, -1].max()))
    # Column c of a row reads position start + c within a run; where a run ends, the position
    # jumps to the next run's start (several jumps add up where runs are empty).
    step = torch.ones(through.shape[0], width + 1, dtype=torch.long)
    step.scatter_add_(1, through[:, :-1], start[:, 1:] - start[:, :-1] - length[:, :-1])
    position = (step[:, :width].cumsum(1) + (start[:, :1] - 1)).clamp_(0, gallery - 1)
    # hav(d / R) = sin^2(dlat / 2) + cos(lat1) cos(lat2) sin^2(dlon / 2), with the sines of the
    # half differences from the half angles' sines and cosines: no sine per pair, in place.
    sin_lat, cos_lat, sin_lon, cos_lon, cos_full = (
        _take(values, position, out) for values, out in zip(points, workspace)
    )
    q_sin_lat, q_cos_lat, q_sin_lon, q_cos_lon, q_cos_full = query[:, :, None].unbind(1)
    term = sin_lat.mul_(q_cos_lat).sub_(cos_lat.mul_(q_sin_lat)).square_()
    across = sin_lon.mul_(q_cos_lon).sub_(cos_lon.mul_(q_sin_lon)).square_()
    term.add_(across.mul_(cos_full).mul_(q_cos_full))
    term.masked_fill_(torch.arange(width) >= through[:, -1:], math.inf)  # padding is infinitely far
    # The m-th smallest of each row (numpy's partition is several times faster than topk here).
    partitioned = _buffer(workspace[5], term.shape).copy_(term).numpy()
    partitioned.partition(m - 1, axis=1)
    kth = torch.from_numpy(partitioned[:, m - 1 : m].copy())
    chosen = term <= kth  # at least m in each row
    nearest = _flat_nonzero(chosen)
    if nearest.numel() > chosen.shape[0] * m:  # more entries at the m-th distance than places left
        ties = (chosen.sum(1) > m).nonzero().squeeze(1)
        chosen[ties] = _earliest_at_boundary(term[ties], _take(order, position[ties]), kth[ties], m)
        nearest = _flat_nonzero(chosen)
    entries = _take(order, _take(position.view(-1), nearest))
    return entries.view(-1, m), _take(term.view(-1), nearest).view(-1, m), kth.squeeze(1)


def _flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Positions of the true elements of a CPU ``mask`` as flattened, in order (numpy's is about
    ten times faster than torch's ``nonzero`` here)."""
    return torch.from_numpy(numpy.flatnonzero(mask.numpy()))


def _take(values: torch.Tensor, index: torch.Tensor, buffer: torch.Tensor | None = None) -> torch.Tensor:
    """``values[index]`` for a 1-D ``values`` (``index_select`` is much faster than indexing on the
    CPU), written into ``buffer`` (see :func:`_buffer`) when one is given."""
    out = values.new_empty(index.shape) if buffer is None else _buffer(buffer, index.shape)
    return torch.index_select(values, 0, index.reshape(-1), out=out.view(-1)).view(index.shape)


def _buffer(buffer: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A tensor of ``shape`` on the start of the 1-D ``buffer``, or a new one where it is too small."""
    size = math.prod(shape)
    return buffer[:size].view(shape) if size <= buffer.numel() else buffer.new_empty(shape)


def _earliest_at_boundary(term: torch.Tensor, entry: torch.Tensor, kth: torch.Tensor, m: int) -> torch.Tensor:
    """``[rows, columns]`` mask of the ``m`` entries of each row: those nearer than ``kth`` and the
    earliest in the gallery at it."""
    closer, tied = term < kth, term == kth
    wanted = m - closer.sum(1, keepdim=True)
    # Padding (infinitely far) gets distinct indices past the gallery's, so that exactly m are chosen.
    padding = torch.iinfo(torch.int32).max + torch.arange(entry.shape[1])
    entry = torch.where(term == math.inf, padding, entry)
    by_index = entry.masked_fill(~tied, torch.iinfo(torch.long).max).sort(dim=1).values
    return closer | (tied & (entry <= by_index.gather(1, wanted - 1)))
