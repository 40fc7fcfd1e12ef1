"""Tiny CVG-Text releases as a hub would hold them: the hub layout as loose files, the official
layout as archives, the release's two quirks, and official-format checkpoint files.

A release is a ``{repository path: bytes}`` dict, ready for :class:`helpers.fake_hub.FakeHub`.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
import zipfile

from cvgtext.data.release.facts import KNOWN_ORPHANS
from helpers.city import panorama_name, photo_name

ORPHAN = sorted(KNOWN_ORPHANS["Brisbane"])[0]
KINDS = ("satellite", "OSM", "ground")


def noise_png(rng: random.Random, size: tuple[int, int] = (16, 16)) -> bytes:
    """A PNG of random pixels: no two tiles alike unless made so."""
    from PIL import Image

    image = Image.frombytes("RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def twin_name(name: str) -> str:
    """``name`` with its latitude moved by a few millimetres: a tile the release holds twice."""
    lat, rest = name.split(",", 1)
    return f"{lat}9,{rest}"


def hub_layout(city: str = "Brisbane", panoramas: int = 24, photos: int = 12, seed: int = 0, quirks: bool = True):
    """``annotation/{version}/{split}.json``, ``reference/{version}-satellite|-OSM/``,
    ``query/{version}-ground/`` of a tiny city; with ``quirks`` (Brisbane), the release's orphan
    training panorama (no satellite tile) and two pairs of byte-identical satellite tiles."""
    rng = random.Random(f"{city}-{seed}")
    files: dict[str, bytes] = {}
    for version, names in (
        (city, [panorama_name(i) for i in range(panoramas)]),
        (f"{city}-photos", [photo_name(i) for i in range(photos)]),
    ):
        splits: dict[str, dict[str, str]] = {"train": {}, "test": {}}
        for i, name in enumerate(names):
            splits["test" if i % 4 == 0 else "train"][name] = (
                f"A street with {i % 5} trees and a {['red', 'blue', 'green'][i % 3]} roof."
            )
        twins = {}
        if quirks and version == city:
            twins = {twin_name(names[1]): names[1], twin_name(names[2]): names[2]}
            for twin, original in twins.items():
                splits["train"][twin] = f"The same tile as {original}, named a little further north."
            splits["train"][ORPHAN] = "A panorama whose satellite tile the release lacks."
        for split, content in splits.items():
            files[f"annotation/{version}/{split}.json"] = json.dumps(content).encode()
        for kind in KINDS:
            folder = ("query" if kind == "ground" else "reference") + f"/{version}-{kind}"
            for name in [*names, *([ORPHAN] if quirks and version == city and kind != "satellite" else [])]:
                files[f"{folder}/{name}"] = noise_png(rng, (32, 16) if kind == "ground" else (16, 16))
            for twin, original in twins.items():
                files[f"{folder}/{twin}"] = files[f"{folder}/{original}"] if kind == "satellite" else noise_png(rng)
    return files


def write_files(root, files: dict[str, bytes]):
    """Write a release's files under ``root``; returns ``root``."""
    for path, content in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(content)
    return root


def official_layout(files: dict[str, bytes]) -> dict[str, bytes]:
    """The same files in the official code's layout: ``CVG-text/{version}/{split}.json`` and
    ``{version}-satellite/`` folders at the top."""
    moved = {}
    for path, content in files.items():
        top, rest = path.split("/", 1)
        moved[f"CVG-text/{rest}" if top == "annotation" else rest] = content
    return moved


def zipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name, content in members.items():
            bundle.writestr(name, content)
    return buffer.getvalue()


def tarred(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            bundle.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def archived(files: dict[str, bytes]) -> dict[str, bytes]:
    """The official layout packed as a hub might: ``CVG-text.tar.gz`` (every city's annotations,
    under their top folder) and one flat ``.zip`` per image folder (bare file names)."""
    official = official_layout(files)
    annotations = {path: content for path, content in official.items() if path.startswith("CVG-text/")}
    packed = {"README.md": b"# CVG-Text\n", "CVG-text.tar.gz": tarred(annotations)}
    folders = sorted({path.split("/", 1)[0] for path in official if not path.startswith("CVG-text/")})
    for folder in folders:
        members = {p.split("/", 1)[1]: c for p, c in official.items() if p.startswith(f"{folder}/")}
        packed[f"images/{folder}.zip"] = zipped(members)
    return packed


def openai_state_dict(width: int = 8, vocab: int = 64, positions: int = 300, grid: int = 2, patch: int = 4) -> dict:
    """An OpenAI-format CLIP state dict (the keys of ``clip.model.CLIP``, one block per tower) at
    tiny widths, its text positional embedding ``positions`` rows long, as the official
    checkpoints' are (300)."""
    import torch

    def block(prefix: str) -> dict:
        return {
            f"{prefix}.attn.in_proj_weight": torch.randn(3 * width, width),
            f"{prefix}.attn.in_proj_bias": torch.zeros(3 * width),
            f"{prefix}.attn.out_proj.weight": torch.randn(width, width),
            f"{prefix}.attn.out_proj.bias": torch.zeros(width),
            f"{prefix}.ln_1.weight": torch.ones(width),
            f"{prefix}.ln_1.bias": torch.zeros(width),
            f"{prefix}.mlp.c_fc.weight": torch.randn(4 * width, width),
            f"{prefix}.mlp.c_fc.bias": torch.zeros(4 * width),
            f"{prefix}.mlp.c_proj.weight": torch.randn(width, 4 * width),
            f"{prefix}.mlp.c_proj.bias": torch.zeros(width),
            f"{prefix}.ln_2.weight": torch.ones(width),
            f"{prefix}.ln_2.bias": torch.zeros(width),
        }

    return {
        "positional_embedding": torch.randn(positions, width),  # [text positions, width]
        "text_projection": torch.randn(width, width),
        "logit_scale": torch.tensor(4.6052),  # ln 100
        "token_embedding.weight": torch.randn(vocab, width),
        "ln_final.weight": torch.ones(width),
        "ln_final.bias": torch.zeros(width),
        **block("transformer.resblocks.0"),
        "visual.class_embedding": torch.randn(width),
        "visual.positional_embedding": torch.randn(grid * grid + 1, width),  # [patches + 1, width]
        "visual.proj": torch.randn(width, width),
        "visual.conv1.weight": torch.randn(width, 3, patch, patch),
        "visual.ln_pre.weight": torch.ones(width),
        "visual.ln_pre.bias": torch.zeros(width),
        **block("visual.transformer.resblocks.0"),
        "visual.ln_post.weight": torch.ones(width),
        "visual.ln_post.bias": torch.zeros(width),
    }


def official_checkpoints(seed: int = 0) -> dict[str, bytes]:
    """Six files named as the official ones (``long_model_<City>-mixed_1e-05_128_<img>_epoch<E>_<R@1>.pth``),
    each a ``torch.save`` of an OpenAI-format state dict with 300 text positions, at tiny widths."""
    import torch

    torch.manual_seed(seed)
    files = {}
    for i, (city, img) in enumerate((c, m) for c in ("Brisbane", "NewYork", "Tokyo") for m in ("sat", "osm")):
        buffer = io.BytesIO()
        torch.save(openai_state_dict(), buffer)
        files[f"long_model_{city}-mixed_1e-05_128_{img}_epoch{10 + i}_{40.5 + i:.2f}.pth"] = buffer.getvalue()
    files["README.md"] = b"# CrossText2Loc\n"
    return files
