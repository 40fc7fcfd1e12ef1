"""The captions of the synthetic city: each fact of a place's scene in one of several wordings.

A panorama's caption states every fact with some filler, shuffled, so that the decisive facts
often pass CLIP's 77 tokens; a photo's states what lies within its field of view. Every
direction word matches the north-up tiles.
"""

from __future__ import annotations

import numpy as np

from cvgtext.data.synthetic import render
from cvgtext.data.synthetic.scene import Scene


def pick(rng: np.random.Generator, options):
    """One of ``options``, drawn with ``rng``."""
    return options[int(rng.integers(len(options)))]


# Captions: several wordings per fact. ``{road}`` is the road's noun phrase, ``{a}``/``{b}`` its ends,
# ``{q}`` a quadrant and ``{side}`` a side of the tile; every direction word matches the north-up tiles.
_AREA = {  # (dense, high_rise) -> what kind of area it looks like
    (True, True): ("busy downtown", "crowded city-centre", "dense urban"),
    (True, False): ("compact residential", "tightly built residential", "crowded old-town"),
    (False, True): ("spacious business", "modern office", "spacious high-rise"),
    (False, False): ("quiet suburban", "leafy suburban", "low-density residential"),
}
_INTRO = (
    "This panoramic street view shows a {area} neighbourhood.",
    "The 360-degree panorama was captured in a {area} area.",
    "Standing in the middle of the road, the camera looks all around a {area} part of the city.",
    "The image is a full street-level panorama of a {area} district.",
)
_PHOTO_INTRO = (
    "A photo looking {dir} in a {area} area.",
    "This picture of a {area} street faces {dir}.",
    "Facing {dir} in a {area} block.",
)
_ROAD_NOUN = {
    True: ("a wide avenue", "a broad multi-lane road", "a wide boulevard"),
    False: ("a narrow street", "a small lane", "a quiet narrow road"),
}
_ROAD = {
    "crossroads": (
        "The camera stands at a crossroads where {road} meets another road at right angles, "
        "with streets leading north, south, east and west.",
        "Two streets cross here at a four-way intersection, one running north to south "
        "and {road} running east to west.",
        "This is a four-way intersection of {road} and a cross street; roads lead away in all four directions.",
    ),
    "roundabout": (
        "A roundabout with a small green island sits in the middle, with four roads leaving it "
        "to the north, south, east and west.",
        "The scene is centred on a traffic circle; cars go round a planted island on {road} "
        "and exit in all four directions.",
        "There is a roundabout at the centre of the view, where {road} and three other roads meet.",
    ),
    "straight": (
        "{Road} runs straight from {a} to {b} through the scene.",
        "The road here is {road}, running between the {a} and the {b}.",
        "We are on {road} that stretches to the {a} and to the {b}.",
    ),
    "tjunction": (
        "At a T-junction, a side road branches off towards the {stem} from {road} running {a} to {b}.",
        "{Road} runs from {a} to {b}, and a smaller road joins it from the {stem}, forming a T-shaped junction.",
        "The street forms a T: the main road goes from {a} to {b} and one branch leads {stem}.",
    ),
    "diagonal": (
        "{Road} cuts diagonally across the area from the {a} to the {b}.",
        "The road runs at an angle, from {a} to {b}; it is {road}.",
        "A diagonal street, {road}, crosses the block from {a} towards {b}.",
    ),
    "curve": (
        "{Road} curves here, bending from the {a} round to the {b}.",
        "The road is curved: it comes in from the {a} and turns towards the {b}.",
        "A bend in {road} connects the {a} side with the {b} side.",
    ),
}
_COLOUR = {
    "red": ("red-brick", "red", "reddish"),
    "grey": ("grey concrete", "grey", "dull grey"),
    "white": ("white", "whitewashed", "white-painted"),
    "yellow": ("yellow", "sand-coloured", "pale yellow"),
    "brown": ("brown", "dark brown", "wooden brown"),
}
_HEIGHT = {
    False: ("low houses", "one- and two-storey houses", "small low-rise homes"),
    True: ("tall apartment blocks", "high-rise towers", "multi-storey office buildings"),
}
_DENSITY = {
    True: ("packed tightly together", "standing shoulder to shoulder", "in a dense, continuous row"),
    False: (
        "spread out with gardens between them",
        "scattered with plenty of open space",
        "set far apart on large plots",
    ),
}
_BUILDINGS = (
    "Most buildings are {c} {h}, {d}.",
    "The street is lined by {c} {h} {d}.",
    "Along the road you can see {h} with {c} walls and roofs, {d}.",
    "The surrounding blocks consist of {h}; they are mostly {c} and {d}.",
)
_CORNER = {  # ``{l}`` is the landmark, ``{a_l}`` the same with its article
    "park": (
        "A green park with trees fills the {q} corner.",
        "To the {q} there is a small park with lawns and trees.",
        "Greenery dominates the {q} side, where a public park is located.",
        "In the {q} you can see a leafy park.",
    ),
    "pitch": (
        "A sports field with a running track lies to the {q}.",
        "On the {q} corner there is a football pitch.",
        "A playing field with white lines occupies the {q}.",
    ),
    "parking": (
        "A parking lot sits in the {q} corner.",
        "To the {q} there is an open car park.",
        "The {q} block is a large, flat parking area.",
    ),
    "landmark": (
        "A striking {l} stands in the {q}.",
        "The most eye-catching building is {a_l} to the {q}.",
        "To the {q} rises {a_l}, clearly visible above the other buildings.",
        "You can also spot {a_l} on the {q} corner.",
    ),
}
SHAPE_WORDS = {
    "round": ("round tower", "circular tower", "cylindrical tower"),
    "square": ("square hall", "square block", "boxy square building"),
    "triangle": ("triangular spire", "pointed triangular church", "triangle-shaped tower"),
}
_WATER = (
    "A river runs along the {side} side of the scene.",
    "To the {side}, the view opens onto a wide river.",
    "The {side} edge is bordered by water; a river flows past there.",
    "On the {side} side the street ends at the riverbank.",
)
_TREES = {
    True: (
        "Trees line both sides of the road.",
        "The street is shaded by a row of trees.",
        "Rows of street trees grow along the sidewalks.",
    ),
    False: (
        "There are hardly any trees along the street.",
        "The road has no street trees.",
        "Few trees are visible along the sidewalks.",
    ),
}
_CARS = (  # indexed by the car count, the last entry for four or more
    ("The road is empty, without any cars.", "No vehicles are on the street."),
    ("A single car is on the road.", "One car drives along the street."),
    ("A couple of cars are on the road.", "Two cars are parked or driving along the street."),
    ("A few cars are on the road.", "Three cars are parked or driving along the street."),
    ("Several cars fill the road.", "There is quite a lot of traffic, with several cars in view."),
)
_SHOP = (
    "On the ground floor there is a {s} with a {c} sign.",
    "A {s} with a {c} shop sign is visible on one corner.",
    "One of the buildings houses a {s}; its sign is {c}.",
)
_SHOP_COLOUR = {
    "cafe": "brown",
    "pharmacy": "green",
    "bank": "blue",
    "bakery": "yellow",
    "convenience store": "red",
    "hotel": "purple",
}
_WEATHER = {
    "sunny": ("The sky is clear and blue.", "It is a bright, sunny day."),
    "overcast": ("The sky is grey and overcast.", "Clouds cover the whole sky."),
    "hazy": ("The light is soft and hazy.", "A pale haze hangs in the air."),
    "evening": (
        "The picture seems to be taken in the late afternoon, with warm orange light.",
        "The sky glows orange in the evening.",
    ),
}
_FILLER = (
    "A few pedestrians walk on the sidewalk.",
    "A cyclist waits at the kerb.",
    "Street lamps stand along the pavement.",
    "Overhead power lines cross the street.",
    "A bus stop with a small shelter is near the camera.",
    "The sidewalks are wide and clean.",
    "Some road markings are faded.",
    "Traffic signs are visible at the corner.",
    "The atmosphere is calm.",
    "A person with a dog walks past.",
)
_COMPASS = ("north", "north-east", "east", "south-east", "south", "south-west", "west", "north-west")


def _road_sentence(scene: Scene, rng: np.random.Generator) -> str:
    road = pick(rng, _ROAD_NOUN[scene.wide_road])
    a = b = stem = ""
    if scene.road == "straight" or scene.road == "tjunction":
        if scene.road == "straight":
            a, b = scene.road_dir.split("-")
        else:  # the main road is perpendicular to the branch
            a, b = ("east", "west") if scene.road_dir in ("north", "south") else ("north", "south")
        stem = scene.road_dir
    elif scene.road == "diagonal":
        a, b = ("north-east", "south-west") if scene.road_dir == "north-east" else ("north-west", "south-east")
    elif scene.road == "curve":
        a, b = scene.road_dir.split("-")
    if rng.random() < 0.5:
        a, b = b, a
    return pick(rng, _ROAD[scene.road]).format(road=road, Road=road[0].upper() + road[1:], a=a, b=b, stem=stem)


def _corner_sentence(scene: Scene, corner: str, rng: np.random.Generator) -> str:
    kind = scene.corners[corner]
    landmark = ""
    if kind == "landmark":
        shape, colour = scene.landmark
        landmark = f"{colour} {pick(rng, SHAPE_WORDS[shape])}"
    article = "an" if landmark[:1] in ("a", "e", "i", "o", "u") else "a"
    return pick(rng, _CORNER[kind]).format(q=corner, l=landmark, a_l=f"{article} {landmark}")


def _fact_sentences(scene: Scene, corners: list[str], water: bool, rng: np.random.Generator) -> list[str]:
    colour, height, density = (
        pick(rng, table[key])
        for table, key in ((_COLOUR, scene.colour), (_HEIGHT, scene.high_rise), (_DENSITY, scene.dense))
    )
    facts = [_road_sentence(scene, rng), pick(rng, _BUILDINGS).format(c=colour, h=height, d=density)]
    facts += [_corner_sentence(scene, corner, rng) for corner in corners]
    if water:
        facts.append(pick(rng, _WATER).format(side=scene.water))
    return facts


def panorama_caption(scene: Scene, rng: np.random.Generator) -> str:
    """All facts plus a little filler, shuffled, so that the decisive ones often pass token 77."""
    sentences = _fact_sentences(scene, list(scene.corners), scene.water is not None, rng)
    sentences.append(pick(rng, _TREES[scene.trees]))
    sentences.append(pick(rng, _CARS[min(scene.cars, len(_CARS) - 1)]))
    if scene.shop:
        sentences.append(pick(rng, _SHOP).format(s=scene.shop, c=_SHOP_COLOUR[scene.shop]))
    sentences.append(pick(rng, _WEATHER[scene.weather]))
    sentences += list(rng.choice(_FILLER, int(rng.integers(1, 4)), replace=False))
    order = [sentences[i] for i in rng.permutation(len(sentences))]
    intro = pick(rng, _INTRO).format(area=pick(rng, _AREA[scene.dense, scene.high_rise]))
    return " ".join([intro, *order] if rng.random() < 0.85 else [*order[:2], intro, *order[2:]])


def photo_caption(scene: Scene, rng: np.random.Generator) -> str:
    """The facts one photo shows: what lies within its field of view, plus one or two others."""

    def in_view(bearing: float, margin: float) -> bool:
        return abs((bearing - scene.heading + 180) % 360 - 180) <= scene.fov / 2 + margin

    corners = [c for c in scene.corners if in_view(render.CORNER_BEARING[c], 15)]
    water = scene.water is not None and in_view(render.SIDE_BEARING[scene.water], 25)
    road, buildings, *facts = _fact_sentences(scene, corners, water, rng)
    if facts:  # a photo of a landmark, park or river says little about the street around it
        facts.append(pick(rng, (road, buildings)))
    else:
        extras = [pick(rng, _TREES[scene.trees]), pick(rng, _WEATHER[scene.weather]), pick(rng, _FILLER)]
        if scene.shop:
            extras.append(pick(rng, _SHOP).format(s=scene.shop, c=_SHOP_COLOUR[scene.shop]))
        facts = [road, buildings] + ([str(pick(rng, extras))] if rng.random() < 0.4 else [])
    direction = _COMPASS[round(scene.heading / 45) % 8]
    intro = pick(rng, _PHOTO_INTRO).format(dir=direction, area=pick(rng, _AREA[scene.dense, scene.high_rise]))
    return " ".join([intro, *(facts[i] for i in rng.permutation(len(facts)))])
