"""What is known of the CVG-Text release and the official checkpoints, in one place: where they
live on the hub, the sizes others published, and the quirks a check names.

The figures are public (the paper, the official code, a third-party full-city evaluation); the
check prints them beside what it counts and never fails on a difference, since the published
figures disagree with one another (see docs/release.md).
"""

from __future__ import annotations

import re

# The dataset card of the authors (text with OSM and satellite tiles), and the complete copy
# third-party evaluations use (street-view panoramas too).
OFFICIAL_DATASET = "CVG-Text/CVG-Text"
FULL_DATASET = "LHL3341/CVG-Text_full"
# The six official CrossText2Loc checkpoints, kept under the hub's own file names in
# ${paths.data_dir}/checkpoints/CrossText2Loc/.
CHECKPOINT_REPO = "CVG-Text/CrossText2Loc"
CHECKPOINT_FOLDER = "checkpoints/CrossText2Loc"
# long_model_<City>-mixed_1e-05_128_<img>_epoch<E>_<R@1>.pth: <R@1> is the best TEST R@1 over
# the epochs (the official script selects on the test split).
CHECKPOINT_NAME = re.compile(
    r"^long_model_(?P<city>[A-Za-z]+)-mixed_1e-05_128_(?P<img>sat|osm)_epoch(?P<epoch>\d+)_(?P<r1>\d+(?:\.\d+)?)\.pth$"
)
CHECKPOINT_IMGS = ("sat", "osm")

CITIES = ("Brisbane", "NewYork", "Tokyo")

# Gallery tiles per image type in a third-party full-city evaluation, and the paper's own
# counts of places (panoramas + single views, each with its satellite and OSM tile).
PUBLISHED_GALLERY = {"Brisbane": 16_983, "NewYork": 9_974, "Tokyo": 6_107}
PAPER_PLACES = {"Brisbane": (7_490, 2_144), "NewYork": (9_974, 2_242), "Tokyo": (6_059, 2_319)}
PUBLISHED_TEST_PANORAMAS = 1_000

# Pairs of byte-identical satellite tiles whose names carry slightly different coordinates.
KNOWN_TWIN_PAIRS = {"Brisbane": 2, "Tokyo": 4}
# Training texts whose tile is not in the release, per city: left out of training by the loader.
KNOWN_ORPHANS = {
    "Brisbane": frozenset({"-27.39043692,152.95798883_2022-12_1_VLlX4egz-3UZkwiMMWtA_d261_z3.png"}),
}

# Words a hub file's folders or archive names may use for each image folder's kind (the part
# after "{version}-" in img.folder).
KIND_WORDS = {
    "satellite": ("satellite", "sat"),
    "osm": ("osm",),
    "ground": ("ground", "stv", "street", "streetview", "panorama", "panoramas"),
    "photo": ("photo",),
}
ANNOTATION_WORDS = ("annotation", "annotations", "cvgtext", "text", "texts", "caption", "captions", "json")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def normalized(text: str) -> str:
    """``text`` lower-cased with everything but letters and digits removed: ``New_York`` and
    ``NewYork`` read alike."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


def words(text: str) -> list[str]:
    """The lower-case words of a path or name (split at everything but letters and digits)."""
    return [word for word in re.split(r"[^a-z0-9]+", text.lower()) if word]


def kind_of(folder_template: str) -> str:
    """The image kind of an ``img.folder`` template: ``reference/{version}-satellite`` -> ``satellite``."""
    return folder_template.rsplit("/", 1)[-1].replace("{version}", "").lstrip("-_ ").lower()


def kind_words(kind: str) -> tuple[str, ...]:
    """The words that name ``kind`` in the hub's folders and archives."""
    return KIND_WORDS.get(kind.lower(), (kind.lower(),))
