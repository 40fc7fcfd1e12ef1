"""The facts of one place of the synthetic city: what its images and its caption are drawn from.

:mod:`cvgtext.data.synthetic.city` draws the scenes and writes captions of them;
:mod:`cvgtext.data.synthetic.render` draws their images. Both import this module, not each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Scene:
    """The facts of one place; its images and its caption are both drawn from them."""

    road: str  # one of synthetic.ROADS
    road_dir: str  # straight: axis; tjunction: side of the branch; diagonal: its northern end; curve: inner corner
    wide_road: bool
    colour: str  # walls and roofs, a key of synthetic_render.BUILDING_RGB
    dense: bool
    high_rise: bool
    water: str | None  # side of the place the river is on
    corners: dict[str, str] = field(default_factory=dict)  # quadrant -> "landmark" | "park" | "pitch" | "parking"
    landmark: tuple[str, str] | None = None  # (shape, colour)
    trees: bool = False
    cars: int = 0
    shop: str | None = None
    weather: str = "sunny"
    heading: int = 0  # degrees clockwise from north at the centre of the street view
    fov: int = 360  # 360 for a panorama, 90 for a single-view photo
