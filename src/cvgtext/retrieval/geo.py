"""Great-circle distances on a sphere of the Earth's mean radius, as the CVG-Text protocol uses."""

from __future__ import annotations

import torch

EARTH_RADIUS_KM = 6371.0


def haversine_km(lat1: torch.Tensor, lon1: torch.Tensor, lat2: torch.Tensor, lon2: torch.Tensor) -> torch.Tensor:
    """Distance in km between points given in degrees; inputs broadcast against each other."""
    lat1, lon1, lat2, lon2 = (torch.deg2rad(t.double()) for t in (lat1, lon1, lat2, lon2))
    return haversine_radians_km(lat1, lon1, lat1.cos(), lat2, lon2, lat2.cos())


def haversine_radians_km(
    lat1: torch.Tensor,
    lon1: torch.Tensor,
    cos_lat1: torch.Tensor,
    lat2: torch.Tensor,
    lon2: torch.Tensor,
    cos_lat2: torch.Tensor,
) -> torch.Tensor:
    """:func:`haversine_km` of float64 radians with their latitudes' cosines given (computed once per point).

    The operations of ``sin((lat2 - lat1) / 2) ** 2 + cos_lat1 * cos_lat2 * sin((lon2 - lon1) / 2) ** 2``
    in the same order, in place on fresh buffers, so the distances are bitwise equal.
    """
    across = (lon2 - lon1).div_(2).sin_().square_()
    return km_of_haversine((lat2 - lat1).div_(2).sin_().square_().add_((cos_lat1 * cos_lat2).mul_(across)))


def km_of_haversine(haversine: torch.Tensor) -> torch.Tensor:
    """Distances in km of haversines of central angles, ``sin^2(d / 2R)``."""
    return haversine.clamp(0.0, 1.0).sqrt_().asin_().mul_(2 * EARTH_RADIUS_KM)
