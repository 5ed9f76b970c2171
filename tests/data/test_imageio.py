"""The data tools' 8-bit reader is io's opening and validation: the same reasons, from bytes or a path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from doubles import write_bad_files
from PIL import Image

from op4ksr.data.imageio import decode_rgb, find_images, read_rgb
from op4ksr.io.images import PHOTO_SUFFIXES, ImageError, load_image


def test_bad_files_give_io_reasons_from_bytes_and_from_paths(tmp_path: Path) -> None:
    expected = write_bad_files(tmp_path)
    for name, fragment in expected.items():
        path = tmp_path / name
        with pytest.raises(ImageError) as from_path:
            read_rgb(path)
        with pytest.raises(ImageError) as from_bytes:
            decode_rgb(path.read_bytes(), str(path))
        assert fragment in from_path.value.reason and from_path.value.reason == from_bytes.value.reason, name


def test_rgb_pixels_are_the_8_bit_values_load_image_reads(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (12, 17, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(np.dstack([rgb, np.full((12, 17), 255, np.uint8)]), "RGBA").save(tmp_path / "b.png")
    for name in ("a.png", "b.png"):
        decoded = np.asarray(read_rgb(tmp_path / name))
        assert np.array_equal(decoded, rgb)
        assert np.array_equal(decoded, np.asarray(decode_rgb((tmp_path / name).read_bytes())))
        assert np.array_equal(decoded, np.rint(load_image(tmp_path / name).pixels * 255).astype(np.uint8))


def test_folders_are_searched_for_photo_suffixes_only(tmp_path: Path) -> None:
    for name in ("a.PNG", "b.jpg", "sub/c.webp", "d.gif", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in find_images([tmp_path])]
    assert found == ["a.PNG", "b.jpg", "sub/c.webp"]
    assert {".gif", ".txt"}.isdisjoint(PHOTO_SUFFIXES)
    assert find_images([tmp_path / "d.gif"]) == [(tmp_path / "d.gif").resolve()]  # named: always tried
