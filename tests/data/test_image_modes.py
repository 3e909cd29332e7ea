"""Image files of the less common PIL modes: both loaders feed the model the same image, or both
refuse the file in one line naming it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from adarem.cli import one_line
from adarem.config import DataConfig
from adarem.data import build_data
from adarem.data.datasets import to_mode, unsupported_image

CPU = torch.device("cpu")
H, W = 10, 12
GREY = np.linspace(0, 255, H * W).reshape(H, W).round().astype(np.uint8)  # a ramp: every level counts


def _tree(root, write, name):
    """train/ and val/ of 2 classes; class a holds ``name`` written by ``write(path)``, class b an
    8-bit PNG of the same ramp."""
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
        write(root / split / "a" / name)
        Image.fromarray(GREY).save(root / split / "b" / "0.png")
    return root


def _val(root, loader="torch"):
    """The first validation image as the model gets it, in grey levels (mean 0, std 1, x 255), at
    the file's own size where possible (image_size = its height; width resized)."""
    cfg = DataConfig(name="folder", root=str(root), image_size=H, random_resized_crop=False,
                     hflip=False, num_workers=0, loader=loader, in_chans=1, mean=[0.0], std=[1.0])
    data = build_data(cfg, 2, 0, 1, 0, CPU)
    x, y = next(iter(data.val.epoch(0)))
    if hasattr(data.val, "to_device"):
        x = data.val.to_device(x, y, CPU, False)[0]
    return x[0] * 255


def _pgm16(path, maxval=65535):
    wide = (GREY.astype(np.uint32) * maxval + 127) // 255
    path.write_bytes(b"P5\n%d %d\n%d\n" % (W, H, maxval) + wide.astype(">u2").tobytes())


def test_a_16_bit_pgm_opened_as_mode_I_is_scaled_not_clipped(tmp_path):
    root = _tree(tmp_path / "t", _pgm16, "0.pgm")
    assert Image.open(root / "val" / "a" / "0.pgm").mode == "I"  # how PIL opens it (0-65535)
    eight = _val(_tree(tmp_path / "e", lambda p: Image.fromarray(GREY).save(p), "0.png"))
    x = _val(root)
    # before: PIL's convert clipped at 255, every pixel but the first white (mean 253 grey levels)
    assert torch.equal(x, eight), (float(x.mean()), float(eight.mean()))
    pytest.importorskip("nvidia.dali")  # DALI's decoder scales it the same way
    assert float((_val(root, "dali") - x).abs().max()) <= 2  # resampling


def test_a_16_bit_png_opened_as_mode_I_by_older_pillow_is_scaled(tmp_path):
    """Older Pillow versions open a 16-bit greyscale PNG as mode "I" (0-65535), not "I;16"."""
    path = tmp_path / "wide.png"
    Image.fromarray((GREY.astype(np.uint16) * 257)).save(path)
    with Image.open(path) as img:
        img.load()
        old = img.convert("I")  # the image as older Pillow versions open it
        old.format = img.format
    assert old.mode == "I" and old.format == "PNG"
    assert np.array_equal(np.asarray(to_mode(old, "L")), GREY)  # before: 255 but for the first pixel


def _lab_tiff(path):
    Image.fromarray(np.dstack([GREY, GREY[::-1], GREY[:, ::-1]])).convert("LAB").save(path)


@pytest.mark.parametrize("name, write, words", [
    ("int32.tif", lambda p: Image.fromarray(GREY.astype(np.int32) * 65793).save(p), "32-bit or signed integer pixels"),
    ("float.tif", lambda p: Image.fromarray(GREY.astype(np.float32) / 255).save(p), "32-bit floating-point pixels"),
    ("lab.tif", _lab_tiff, "LAB colour space"),
])
@pytest.mark.parametrize("loader, workers", [("torch", 0), ("torch", 1), ("dali", 0), ("dali", 1)])
def test_pixels_the_loaders_would_read_differently_are_refused_in_one_line(tmp_path, name, write, words, loader,
                                                                             workers):
    """Before: the torch loader clipped a 32-bit TIFF at 255 (all white) and a 0-1 float TIFF to 0-1
    (all black), where DALI failed on the first (an error naming no file) and scaled the second to
    0-255; a LAB TIFF differed by up to 69 grey levels between the two."""
    if loader == "dali":
        pytest.importorskip("nvidia.dali")
    root = _tree(tmp_path, write, name)
    cfg = DataConfig(name="folder", root=str(root), image_size=8, val_resize=8, num_workers=workers, loader=loader,
                     in_chans=3, on_corrupt="skip")  # not a corrupt file: never replaced
    data = build_data(cfg, 2, 0, 1, 0, CPU)
    from adarem.data import DataError

    with pytest.raises(DataError) as err:
        list(data.train.epoch(0))
    message = one_line(err.value)  # the line the command prints (a torch worker's error arrives as a traceback)
    assert "\n" not in message and str(root / "train" / "a" / name) in message and words in message, message
    assert "save it as" in message


@pytest.mark.parametrize("maxval", [15, 1023])
def test_a_binary_pgm_of_another_maxval_is_refused_by_dali_that_does_not_scale_it(tmp_path, maxval):
    """Before: DALI read a maxval-15 PGM of this ramp as mean 6 grey levels, a maxval-1023 one as 1
    (values taken as if the maxval were 255 or 65535), where PIL scales it (the torch loader: 127)."""
    def write(path):
        values = (GREY.astype(np.uint32) * maxval + 127) // 255
        path.write_bytes(b"P5\n# a comment\n%d %d\n%d\n" % (W, H, maxval)
                         + values.astype(">u2" if maxval > 255 else np.uint8).tobytes())

    root = _tree(tmp_path / "t", write, "0.pgm")
    x = _val(root)  # the torch loader: PIL scales it to the maxval
    assert float((x - _val(_tree(tmp_path / "e", lambda p: Image.fromarray(GREY).save(p), "0.png"))).abs().max()) <= 9
    pytest.importorskip("nvidia.dali")
    from adarem.data import DataError

    with pytest.raises(DataError) as err:
        _val(root, "dali")
    message = one_line(err.value)
    assert "\n" not in message and str(root / "val" / "a" / "0.pgm") in message, message
    assert f"maxval {maxval}" in message and "data.loader=torch" in message


def test_dali_reads_the_pgm_it_scales_as_the_torch_loader_does(tmp_path):
    """A plain (ASCII) PGM of maxval 15, which DALI does scale, and binary ones of maxval 255 and 65535
    are read, as under the torch loader."""
    values = (GREY.astype(np.uint32) * 15 + 127) // 255
    writers = {"plain.pgm": lambda p: p.write_bytes(b"P2\n%d %d\n15\n" % (W, H) + " ".join(map(str, values.reshape(-1))).encode() + b"\n"),
               "eight.pgm": lambda p: p.write_bytes(b"P5\n%d %d\n255\n" % (W, H) + GREY.tobytes()),
               "sixteen.pgm": _pgm16}
    pytest.importorskip("nvidia.dali")
    for name, write in writers.items():
        root = _tree(tmp_path / name, write, name)
        assert float((_val(root, "dali") - _val(root)).abs().max()) <= 2, name


def test_a_file_that_pil_decodes_and_dali_does_not_is_named(tmp_path):
    """A 1-bit TIFF as PIL writes it (no BitsPerSample tag: 1 by the TIFF standard), which DALI's
    TIFF parser refuses. Before: 'DALI failed on a batch (Error in CPU operator ...)', naming no
    file. The torch loader reads it (0 and 255)."""
    pytest.importorskip("nvidia.dali")
    root = _tree(tmp_path, lambda p: Image.fromarray(GREY > 127).save(p), "bits.tif")
    x = _val(root)  # the torch loader reads it
    assert float(x.min()) == 0 and float(x.max()) == 255
    from adarem.data import DataError

    with pytest.raises(DataError) as err:
        _val(root, "dali")
    message = one_line(err.value)
    assert "\n" not in message and str(root / "val" / "a" / "bits.tif") in message, message
    assert "decodes in PIL but not in DALI" in message and "data.loader=torch" in message
    # DALI's cause, after the operator's name (before: the operator's name alone, "...decoders.image`,")
    assert "decoders.image`: " in message, message


# a square colour image (no resampling: image_size is its size): three different ramps
RGB = np.ascontiguousarray(np.dstack([GREY, GREY[::-1], GREY[:, ::-1]])[:, :H])


def _frames(path, **kw):
    """Two frames: RGB, then its negative (the loaders read the first)."""
    Image.fromarray(RGB).save(path, save_all=True, append_images=[Image.fromarray(255 - RGB)], **kw)


def _exif_rotated(path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90": torchvision's ImageFolder and both loaders use the pixels as stored
    Image.fromarray(RGB).save(path, exif=exif, quality=100, subsampling=0)


def _rgb16_png(path):
    import struct
    import zlib

    rows = b"".join(b"\0" + (RGB[r].astype(np.uint32) * 257).astype(">u2").tobytes() for r in range(H))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", H, H, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _rgba(path, alpha_mode):
    rgba = Image.fromarray(np.dstack([RGB, np.where(np.arange(H) < 4, 0, 255).astype(np.uint8)[None].repeat(H, 0)]))
    rgba.convert(alpha_mode).save(path)


# (file name, writer, what the loaders should read: the RGB image as PIL converts it). Both loaders
# drop alpha (the colour under a transparent pixel is read, as torchvision's convert("RGB") does),
# ignore EXIF orientation and read the first frame of a multi-frame file.
AGREED = [
    ("palette_transparent.png", lambda p: Image.fromarray(RGB).quantize(64).save(p, transparency=0),
     lambda: Image.fromarray(RGB).quantize(64).convert("RGB")),
    ("rgba.png", lambda p: _rgba(p, "RGBA"), lambda: Image.fromarray(RGB)),
    ("la.png", lambda p: _rgba(p, "LA"), lambda: Image.fromarray(RGB).convert("L")),
    ("bits.png", lambda p: Image.fromarray(RGB).convert("1").save(p), lambda: Image.fromarray(RGB).convert("1")),
    ("grey.jpg", lambda p: Image.fromarray(GREY).save(p, quality=95), lambda: Image.fromarray(GREY)),
    ("cmyk.jpg", lambda p: Image.fromarray(RGB).convert("CMYK").save(p, quality=100, subsampling=0), lambda: Image.fromarray(RGB)),
    ("exif_rotated.jpg", _exif_rotated, lambda: Image.fromarray(RGB)),
    ("big_endian_16.tif", lambda p: Image.frombytes("I;16B", (H, H), (GREY[:, :H].astype(np.uint32) * 257)
                                                     .astype(">u2").tobytes()).save(p), lambda: Image.fromarray(GREY[:, :H])),
    ("rgb16.png", _rgb16_png, lambda: Image.fromarray(RGB)),
    ("frames.tif", _frames, lambda: Image.fromarray(RGB)),
    ("frames.png", _frames, lambda: Image.fromarray(RGB)),
    ("frames.webp", lambda p: _frames(p, lossless=True), lambda: Image.fromarray(RGB)),
]


def _rgb_val(root, loader):
    cfg = DataConfig(name="folder", root=str(root), image_size=H, random_resized_crop=False,
                     hflip=False, num_workers=0, loader=loader, mean=[0.0] * 3, std=[1.0] * 3)
    data = build_data(cfg, 2, 0, 1, 0, CPU)
    x, y = next(iter(data.val.epoch(0)))
    if hasattr(data.val, "to_device"):
        x = data.val.to_device(x, y, CPU, False)[0]
    return x[0] * 255


@pytest.mark.parametrize("name, write, expected", AGREED, ids=[a[0] for a in AGREED])
def test_both_loaders_read_the_same_image_of_every_mode_they_accept(tmp_path, name, write, expected):
    """Checked and found right (no fix): the same pixels from both loaders, those of the image as
    PIL converts it to RGB (a lossy JPEG within its own error)."""
    root = _tree(tmp_path / "t", write, name)
    reference = _tree(tmp_path / "r", lambda p: expected().convert("RGB").save(p), "ref.png")
    x = _rgb_val(root, "torch")
    lossy = name.endswith(".jpg")
    assert float((x - _rgb_val(reference, "torch")).abs().max()) <= (6 if lossy else 1), name
    pytest.importorskip("nvidia.dali")
    assert float((_rgb_val(root, "dali") - x).abs().max()) <= 1, name  # rounding


def test_a_greyscale_tiff_with_alpha_is_refused_by_dali_that_misreads_it(tmp_path):
    """Before: DALI fed it as RGB made of the grey, the alpha (0 or 255) and the next pixel's grey,
    up to 153 grey levels from the torch loader's image, without a word. The same image as PNG is
    read alike by both (test above: la.png)."""
    write = lambda p: _rgba(p, "LA")  # noqa: E731
    root = _tree(tmp_path, write, "la.tif")
    with Image.open(root / "val" / "a" / "la.tif") as img:
        assert (img.format, img.mode) == ("TIFF", "LA")
    x = _rgb_val(root, "torch")  # the grey, in three channels
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    pytest.importorskip("nvidia.dali")
    from adarem.data import DataError

    with pytest.raises(DataError) as err:
        _rgb_val(root, "dali")
    message = one_line(err.value)
    assert "\n" not in message and str(root / "val" / "a" / "la.tif") in message, message
    assert "greyscale TIFF with alpha" in message and "data.loader=torch" in message


@pytest.mark.parametrize("mode", ["I;16S", "I;16BS", "I;32", "F;32BF"])
def test_the_signed_and_32_bit_modes_of_older_pillow_versions_are_refused(mode):
    """Older Pillow versions (pillow>=10 is allowed) can open a signed 16-bit TIFF as mode "I;16S",
    a mode Pillow 13 no longer has (it opens such a file as "I", refused above): a stand-in with it.
    Before: not refused, and to_mode scaled its negative values as if unsigned (wrapped round)."""
    from types import SimpleNamespace

    refusal = unsupported_image(SimpleNamespace(mode=mode, format="TIFF"), "x.tif")
    assert refusal is not None and "x.tif" in str(refusal) and f"PIL mode {mode}" in str(refusal)
    for ok in ("I;16", "I;16B", "L", "RGB"):
        assert unsupported_image(SimpleNamespace(mode=ok, format="TIFF"), "x.tif") is None
