"""Every input kind gives an output of the same kind, 4× the (upright) size, metadata kept."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import png
import pytest
import tifffile
from doubles import InterpolationPipeline, write_bad_files
from PIL import Image, ImageCms, ImageOps, features

from op4ksr.api import Upscaler
from op4ksr.io.images import ImageError, apply_orientation, load_image, save_image

SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.fixture
def upscaler() -> Upscaler:
    return Upscaler(InterpolationPipeline(scale=4))


def _exif(orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "op4ksr-test-camera"  # Make: proves the rest of EXIF is kept
    return exif.tobytes()


def _photo(width: int = 24, height: int = 16) -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((width, height), Image.BOX))


def _write_png16(path: Path, array: np.ndarray, alpha: bool = False) -> None:
    h, w, c = array.shape
    writer = png.Writer(w, h, greyscale=c in (1, 2), alpha=alpha, bitdepth=16)
    with open(path, "wb") as fh:
        writer.write_array(fh, array.reshape(-1))


# Each case: writer(path) and the PIL mode the output must have (None: checked separately).
def _rgb_jpeg(path: Path) -> None:
    Image.fromarray(_photo()).save(path, quality=95, icc_profile=SRGB_ICC, exif=_exif())


def _grey_png(path: Path) -> None:
    Image.fromarray(_photo()).convert("L").save(path, icc_profile=None)


def _rgba_png(path: Path) -> None:
    rgba = np.dstack([_photo(), np.tile(np.linspace(0, 255, 24, dtype=np.uint8), (16, 1))])
    Image.fromarray(rgba, "RGBA").save(path, icc_profile=SRGB_ICC)


def _la_png(path: Path) -> None:
    grey = np.asarray(Image.fromarray(_photo()).convert("L"))
    Image.fromarray(np.dstack([grey, 255 - grey]), "LA").save(path)


def _palette_png(path: Path) -> None:
    im = Image.fromarray(_photo()).quantize(16)
    im.info["transparency"] = 0
    im.save(path, transparency=0)


def _grey16_png(path: Path) -> None:
    values = (np.arange(24 * 16, dtype=np.uint32).reshape(16, 24) * 171 + 7).astype(np.uint16)
    Image.fromarray(values).save(path)


def _rgb16_png(path: Path) -> None:
    _write_png16(path, (_photo().astype(np.uint16) * 257 + 3))


def _rgba16_png(path: Path) -> None:
    rgb = _photo().astype(np.uint16) * 257 + 3
    alpha = np.full(rgb.shape[:2] + (1,), 40000, np.uint16)
    _write_png16(path, np.concatenate([rgb, alpha], axis=-1), alpha=True)


def _cmyk_jpeg(path: Path) -> None:
    Image.fromarray(_photo()).convert("CMYK").save(path, quality=95)


def _rgb16_tiff(path: Path) -> None:
    tifffile.imwrite(path, _photo().astype(np.uint16) * 257, photometric="rgb")


KINDS = {
    "rgb.jpg": (_rgb_jpeg, "png", "RGB"),
    "grey.png": (_grey_png, "png", "L"),
    "rgba.png": (_rgba_png, "png", "RGBA"),
    "la.png": (_la_png, "png", "LA"),
    "palette.png": (_palette_png, "png", "RGBA"),
    "grey16.png": (_grey16_png, "png", "I;16"),
    "rgb16.png": (_rgb16_png, "png", None),
    "rgba16.png": (_rgba16_png, "png", None),
    "cmyk.jpg": (_cmyk_jpeg, "jpg", "CMYK"),
    "cmyk-tiff.jpg": (_cmyk_jpeg, "tiff", "CMYK"),
    "rgb16.tif": (_rgb16_tiff, "tiff", None),
}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_each_kind_gives_same_kind_at_4x(tmp_path: Path, upscaler: Upscaler, name: str) -> None:
    writer, fmt, mode = KINDS[name]
    src = tmp_path / name
    writer(src)
    with Image.open(src) as probe:
        w, h = probe.size
    out = tmp_path / f"out.{fmt}"
    outcome = upscaler.upscale_file(src, out, fmt=fmt)
    assert outcome.input_size == (w, h)
    assert outcome.output_size == (4 * w, 4 * h)
    if mode is not None:
        with Image.open(out) as result:
            assert result.size == (4 * w, 4 * h)
            assert result.mode == mode
    elif fmt == "png":  # 16-bit colour: Pillow can't hold it, read with pypng
        width, height, _, info = png.Reader(filename=str(out)).asDirect()
        assert (width, height, info["bitdepth"]) == (4 * w, 4 * h, 16)
        assert info["alpha"] == ("rgba" in name)
    else:
        array = tifffile.imread(out)
        assert array.shape == (4 * h, 4 * w, 3) and array.dtype == np.uint16


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp", "tiff"])
def test_orientation_applied_and_icc_exif_kept(tmp_path: Path, upscaler: Upscaler, fmt: str) -> None:
    photo = _photo(24, 16)
    src = tmp_path / "rotated.jpg"
    Image.fromarray(photo).save(src, quality=98, icc_profile=SRGB_ICC, exif=_exif(orientation=6))
    out = tmp_path / f"out.{fmt}"
    upscaler.upscale_file(src, out, fmt=fmt)
    with Image.open(src) as original:
        upright = np.asarray(ImageOps.exif_transpose(original), dtype=np.float32)
    with Image.open(out) as result:
        assert result.size == (4 * 16, 4 * 24)  # orientation 6: portrait now
        assert result.info.get("icc_profile") == SRGB_ICC
        exif = result.getexif()
        assert exif.get(0x0112) == 1
        assert exif.get(0x010F) == "op4ksr-test-camera"
        back = np.asarray(result.convert("RGB").resize((16, 24), Image.BOX), dtype=np.float32)
    # Bicubic ×4 then a box ×¼ is close to the upright input, and far from the wrong rotation.
    assert np.abs(back - upright).mean() < 12
    assert np.abs(back - np.rot90(upright, 2)).mean() > 25


@pytest.mark.parametrize("orientation", range(1, 9))
def test_apply_orientation_matches_pillow(orientation: int) -> None:
    array = np.arange(5 * 3 * 2, dtype=np.uint8).reshape(5, 3, 2)[..., 0]
    im = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    im.save(buffer, "PNG", exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue()))))
    np.testing.assert_array_equal(apply_orientation(array, orientation), expected)


def test_alpha_premultiplied_no_dark_fringe(tmp_path: Path, upscaler: Upscaler) -> None:
    yy, xx = np.mgrid[0:16, 0:16]
    inside = (yy - 7.5) ** 2 + (xx - 7.5) ** 2 < 25
    rgba = np.zeros((16, 16, 4), np.uint8)  # transparent pixels are black underneath
    rgba[inside] = (255, 0, 0, 255)
    out = upscaler(Image.fromarray(rgba, "RGBA"), scale=4)
    result = np.asarray(out)
    edge = (result[..., 3] > 13) & (result[..., 3] < 242)
    assert out.mode == "RGBA" and out.size == (64, 64) and edge.sum() > 20
    # Premultiplied resampling of a single colour gives back exactly that colour at the edge.
    assert result[edge, 0].min() >= 254 and result[edge, 1:3].max() <= 1
    # Resampling straight colour would darken the same pixels (what users see as fringes).
    import torch
    import torch.nn.functional as F

    straight = F.interpolate(torch.from_numpy(rgba[..., 0].astype(np.float32))[None, None], scale_factor=4, mode="bicubic")
    assert straight[0, 0].numpy()[edge].min() < 200


def test_constant_values_survive_exactly_in_8_and_16_bit(tmp_path: Path, upscaler: Upscaler) -> None:
    Image.fromarray(np.full((8, 10), 12345, np.uint16)).save(tmp_path / "g16.png")
    Image.fromarray(np.full((8, 10), 77, np.uint8)).save(tmp_path / "g8.png")
    upscaler.upscale_file(tmp_path / "g16.png", tmp_path / "g16_x4.png")
    upscaler.upscale_file(tmp_path / "g8.png", tmp_path / "g8_x4.png")
    assert np.unique(np.asarray(Image.open(tmp_path / "g16_x4.png"))).tolist() == [12345]
    assert np.unique(np.asarray(Image.open(tmp_path / "g8_x4.png"))).tolist() == [77]


def test_16bit_gradient_keeps_more_than_8_bits(tmp_path: Path, upscaler: Upscaler) -> None:
    _rgb16_png(tmp_path / "in.png")
    upscaler.upscale_file(tmp_path / "in.png", tmp_path / "out.png")
    _, _, rows, _ = png.Reader(filename=str(tmp_path / "out.png")).asDirect()
    values = np.vstack([np.asarray(r) for r in rows])
    assert (values % 257 != 0).mean() > 0.5  # an 8-bit round trip would give only multiples of 257


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_scales_give_exact_sizes(upscaler: Upscaler, scale: int) -> None:
    out = upscaler(_photo(23, 17), scale=scale)
    assert out.size == (23 * scale, 17 * scale)


def test_cmyk_to_png_is_rgb_with_a_note(tmp_path: Path, upscaler: Upscaler) -> None:
    _cmyk_jpeg(tmp_path / "c.jpg")
    outcome = upscaler.upscale_file(tmp_path / "c.jpg", tmp_path / "c.png")
    assert Image.open(tmp_path / "c.png").mode == "RGB"
    assert any("CMYK" in note for note in outcome.notes)


def test_numpy_inputs_keep_their_kind(upscaler: Upscaler) -> None:
    grey = upscaler(np.full((5, 7), 200, np.uint8))
    rgba16 = load_image(np.zeros((5, 7, 4), np.uint16))
    floats = upscaler(np.random.default_rng(0).random((5, 7, 3)))
    assert (grey.mode, grey.size) == ("L", (28, 20))
    assert (rgba16.bits, rgba16.colour, rgba16.alpha is not None) == (16, "rgb", True)
    assert (floats.mode, floats.size) == ("RGB", (28, 20))
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((5, 7, 5), np.uint8))


@pytest.mark.skipif(not features.check("avif"), reason="Pillow built without AVIF")
def test_avif_input(tmp_path: Path, upscaler: Upscaler) -> None:
    Image.fromarray(_photo()).save(tmp_path / "a.avif")
    assert upscaler(tmp_path / "a.avif").size == (96, 64)


def test_bad_files_give_one_line_reasons(tmp_path: Path) -> None:
    expected = write_bad_files(tmp_path)
    for name, fragment in expected.items():
        with pytest.raises(ImageError) as info:
            load_image(tmp_path / name)
        assert fragment in info.value.reason, (name, info.value.reason)
        assert "\n" not in info.value.reason


def test_max_pixels_is_configurable_both_ways(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(ImageError, match="10,000 pixels exceeds the limit of 9,999"):
        load_image(tmp_path / "small.png", max_pixels=9_999)
    assert load_image(tmp_path / "small.png", max_pixels=10_000).size == (100, 100)
    write_bad_files(tmp_path)
    # Above Pillow's own bomb limit the header passes our check and decoding then fails honestly.
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(tmp_path / "huge.png", max_pixels=10**9)


def test_save_never_overwrites_unless_asked(tmp_path: Path) -> None:
    data = load_image(np.zeros((4, 4, 3), np.uint8))
    target = tmp_path / "x.png"
    target.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        save_image(data, target)
    assert target.read_bytes() == b"keep me"
    save_image(data, target, overwrite=True)
    assert Image.open(target).size == (4, 4)
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]  # no temporary left behind


def test_non_ascii_names(tmp_path: Path, upscaler: Upscaler) -> None:
    src = tmp_path / "фото 写真 é.png"
    Image.fromarray(_photo()).save(src)
    upscaler.upscale_file(src, tmp_path / "out" / "фото 写真 é_x4.png")
    assert Image.open(tmp_path / "out" / "фото 写真 é_x4.png").size == (96, 64)


def test_output_gets_umask_permissions_not_mkstemp_0600(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        save_image(load_image(np.zeros((4, 4, 3), np.uint8)), tmp_path / "p.png")
    finally:
        os.umask(old)
    assert (tmp_path / "p.png").stat().st_mode & 0o777 == 0o640


def test_profile_that_no_longer_fits_is_not_embedded(tmp_path: Path, upscaler: Upscaler) -> None:
    grey_icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()  # a non-RGB space
    Image.fromarray(_photo()).save(tmp_path / "rgb_with_lab_profile.png", icc_profile=grey_icc)
    outcome = upscaler.upscale_file(tmp_path / "rgb_with_lab_profile.png", tmp_path / "o.png")
    assert Image.open(tmp_path / "o.png").info.get("icc_profile") is None
    assert any("does not describe RGB output" in note for note in outcome.notes)
    # RGB keeps an RGB profile byte for byte (the ordinary case).
    Image.fromarray(_photo()).save(tmp_path / "srgb.png", icc_profile=SRGB_ICC)
    upscaler.upscale_file(tmp_path / "srgb.png", tmp_path / "o2.png")
    assert Image.open(tmp_path / "o2.png").info["icc_profile"] == SRGB_ICC
