"""The page's pictures as files: written whole, once, however many answers write them at once."""

from __future__ import annotations

import threading

from PIL import Image

from cvgtext.commands.shown_files import ShownFiles


def test_many_answers_writing_the_same_pictures_at_once_all_get_whole_files(tmp_path):
    files = ShownFiles(tmp_path / "shown")
    pictures = [Image.new("RGB", (200, 200), (10 * i, 20, 30)) for i in range(4)]
    found, errors = [], []

    def answer():
        try:
            for _ in range(20):
                found.append([files.path(picture) for picture in pictures])
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=answer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(found) == 160 and all(paths == found[0] for paths in found)
    for path, picture in zip(found[0], pictures):
        with Image.open(path) as image:
            assert image.convert("RGB").tobytes() == picture.tobytes()
    assert sorted(p.name for p in (tmp_path / "shown").iterdir()) == sorted(p.rsplit("/", 1)[1] for p in found[0])
    assert files.gallery([(pictures[0], "1: 50 %")]) == [(found[0][0], "1: 50 %")]
    assert files.path(None) is None and files.gallery(None) is None


def test_a_folder_that_cannot_be_written_leaves_the_picture_out(read_only_dir):
    files = ShownFiles(read_only_dir)
    assert files.path(Image.new("RGB", (8, 8))) is None
