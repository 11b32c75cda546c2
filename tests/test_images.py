"""toolkit/data/images.py on its own: every refusal with its exact reason, the 16-bit / 32-bit / float scaling to
8 bits written out here, EXIF orientation, the first frame of an animation, and `read_file` against FIFOs,
devices, directories and size limits at their exact bounds."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from toolkit.data.images import (
    IMAGE_EXTENSIONS,
    MAX_FILE_BYTES,
    MAX_PIXELS,
    ImageDecodeError,
    Skipped,
    decode_image,
    is_image_file,
    load_image,
    read_file,
)


def _png(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_constants_and_names():
    """Bugs: a limit or an extension changed silently."""
    assert MAX_PIXELS == 64 * 1024 * 1024 and MAX_FILE_BYTES == 256 * 1024 * 1024
    assert {
        ".png",
        ".jpg",
        ".jpeg",
        ".jfif",
        ".webp",
        ".tif",
        ".tiff",
        ".bmp",
        ".gif",
        ".ppm",
        ".pgm",
    } == IMAGE_EXTENSIONS
    assert is_image_file(__import__("pathlib").Path("a/B.JPG")) and not is_image_file(
        __import__("pathlib").Path("a.txt")
    )
    e = ImageDecodeError("dir/x.png", "bad")
    assert str(e) == "dir/x.png: bad" and e.path == "dir/x.png" and e.reason == "bad"
    assert Skipped("a", "b") == Skipped("a", "b")


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file (0 bytes)"),
        (b"hello, not an image", "not a recognised image format"),
        (
            _png(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)))[:2000],
            "corrupt or truncated image (",
        ),
    ],
)
def test_refusals_name_the_file_and_the_reason(data, reason):
    with pytest.raises(ImageDecodeError) as e:
        decode_image(data, "d/x.png")
    assert e.value.path == "d/x.png" and e.value.reason.startswith(reason) and str(e.value).startswith("d/x.png: ")
    assert "\n" not in str(e.value)


def test_pixel_limit_is_inclusive():
    """Bugs: the limit compared with >= (refusing an image of exactly the limit), or not applied."""
    data = _png(Image.new("RGB", (30, 20)))
    assert decode_image(data, max_pixels=600).size == (30, 20)
    with pytest.raises(ImageDecodeError, match=r"x.png: too large: 30x20 pixels exceeds the limit of 599$"):
        decode_image(data, "x.png", max_pixels=599)


def test_decompression_bomb_is_refused(monkeypatch):
    """Bug: PIL's bomb warning let through (it is turned into an error while opening)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageDecodeError, match=r"decompression bomb refused \("):
        decode_image(_png(Image.new("RGB", (12, 12))), "b.png")  # 144 px: over 100 (warning), under 200 (error)


def test_sixteen_bit_and_int32_images_scale_to_eight_bits():
    """Bugs: the 16-bit peak, the clip, or the integer scaling changed (written out: v * 255 // 65535)."""
    a = np.array([[0, 257, 65535, 30000]], np.uint16)
    got = decode_image(_png(Image.fromarray(a)))
    assert got.mode == "L" and np.asarray(got).tolist() == [[0, 1, 255, 30000 * 255 // 65535]]
    small = np.array([[0, 100, 255, 7]], np.int32)  # mode I holding 8-bit values: kept as they are
    got = decode_image(_png(Image.fromarray(small), "TIFF"))
    assert got.mode == "L" and np.asarray(got).tolist() == [[0, 100, 255, 7]]
    wide = np.array([[0, 1000, 70000, -5]], np.int32)  # above 255: a 16-bit scale, clipped
    got = decode_image(_png(Image.fromarray(wide), "TIFF"))
    assert np.asarray(got).tolist() == [[0, 1000 * 255 // 65535, 255, 0]]


def test_float_images_stretch_to_eight_bits():
    """Bugs: the min-max stretch inverted or off by its ends, a constant image dividing by zero, NaN kept."""
    a = np.array([[-1.0, 0.0, 1.0, 3.0]], np.float32)
    got = decode_image(_png(Image.fromarray(a), "TIFF"))
    assert got.mode == "L" and np.asarray(got).tolist() == [[0, 63, 127, 255]]
    flat = decode_image(_png(Image.fromarray(np.full((2, 2), 5.0, np.float32)), "TIFF"))
    assert np.asarray(flat).tolist() == [[0, 0], [0, 0]]
    nan = np.array([[np.nan, 0.0, 2.0]], np.float32)
    assert np.asarray(decode_image(_png(Image.fromarray(nan), "TIFF"))).tolist() == [[0, 0, 255]]


def test_modes_other_than_deep_ones_are_kept():
    for mode in ("RGB", "RGBA", "L", "P", "CMYK"):
        fmt = "TIFF" if mode == "CMYK" else "PNG"
        assert decode_image(_png(Image.new(mode, (3, 2)), fmt)).mode == mode


def test_exif_orientation_is_applied_and_a_broken_exif_keeps_the_image():
    """Bugs: the EXIF transpose dropped, or an exception in it losing an otherwise readable image."""
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    got = decode_image(_png(img, "JPEG", exif=exif.tobytes()))
    assert got.size == (20, 40)
    bad = Image.Exif()
    bad[0x0112] = 99  # not an orientation: PIL leaves the image as it is
    assert decode_image(_png(img, "JPEG", exif=bad.tobytes())).size == (40, 20)


def test_first_frame_of_an_animation():
    """Bug: the seek to frame 0 dropped (a file opened at another frame, or the last frame decoded)."""
    frames = [Image.new("L", (4, 4), v) for v in (10, 200, 90)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    got = decode_image(buf.getvalue())
    assert np.asarray(got.convert("L"))[0, 0] == 10


def test_read_file_bounds_and_kinds(tmp_path):
    """Bugs: the size limit off by one, a FIFO or a device read (or blocking), a directory or a missing file not
    one line."""
    f = tmp_path / "a.png"
    f.write_bytes(b"x" * 100)
    assert read_file(f, max_bytes=100) == b"x" * 100
    with pytest.raises(ImageDecodeError, match=r"a.png: file too large: 100 bytes exceeds the limit of 99$"):
        read_file(f, max_bytes=99)
    with pytest.raises(ImageDecodeError, match=r"not a regular file \(a directory\)$"):
        read_file(tmp_path)
    fifo = tmp_path / "f.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageDecodeError, match=r"f.png: not a regular file \(a FIFO\)$"):
        read_file(fifo)
    dev = tmp_path / "z.png"
    dev.symlink_to("/dev/zero")
    with pytest.raises(ImageDecodeError, match=r"z.png: not a regular file \(a character device\)$"):
        read_file(dev)
    with pytest.raises(ImageDecodeError, match=r"missing.png: cannot read file \(No such file or directory\)$"):
        read_file(tmp_path / "missing.png")


def test_load_image_applies_both_limits(tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(_png(Image.new("RGB", (10, 10))))
    assert load_image(p).size == (10, 10)
    with pytest.raises(ImageDecodeError, match="too large: 10x10"):
        load_image(p, max_pixels=99)
    with pytest.raises(ImageDecodeError, match="file too large"):
        load_image(p, max_bytes=10)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I;16N"])
def test_every_16_bit_layout_is_scaled_from_65535(mode):
    """Bugs: a 16-bit layout (big- or little-endian, native) left out, so its values are cut to 8 bits instead of
    scaled; or a 16-bit image whose values happen to stay under 256 scaled as if it were 8-bit."""
    from toolkit.data.images import _to_8bit

    img = Image.new(mode, (4, 1))
    for x, v in enumerate((0, 255, 32768, 65535)):
        img.putpixel((x, 0), v)
    got = _to_8bit(img)
    assert got.mode == "L" and np.asarray(got).tolist() == [[0, 0, 127, 255]]
    dark = Image.new(mode, (2, 1))
    dark.putpixel((1, 0), 200)  # 200 / 65535 of full scale: black, not 200
    assert np.asarray(_to_8bit(dark)).tolist() == [[0, 0]]


def test_a_32_bit_image_just_over_8_bits_takes_the_16_bit_scale():
    """Bug: the switch to the 16-bit scale moved off 255 (a value of 256 would then be clipped to 255)."""
    from toolkit.data.images import _to_8bit

    img = Image.fromarray(np.array([[0, 256, 255]], np.int32))
    assert np.asarray(_to_8bit(img)).tolist() == [[0, 256 * 255 // 65535, 255 * 255 // 65535]]
    assert np.asarray(_to_8bit(Image.fromarray(np.array([[0, 255]], np.int32)))).tolist() == [[0, 255]]


def test_a_file_that_grows_while_read_and_a_failing_read_are_one_line(tmp_path, monkeypatch):
    """Bugs: a file that grew past the limit between fstat and read accepted, or a read error's message losing the
    file name or its reason."""
    from toolkit.data import images

    f = tmp_path / "g.png"
    f.write_bytes(b"x" * 50)
    real_fstat = os.fstat

    class Small:
        def __init__(self, st):
            self.st_mode, self.st_size = st.st_mode, 10  # what fstat saw before the file grew

    monkeypatch.setattr(images.os, "fstat", lambda fd: Small(real_fstat(fd)))
    with pytest.raises(ImageDecodeError, match=r"g.png: file too large: more than 20 bytes$"):
        read_file(f, max_bytes=20)
    monkeypatch.setattr(images.os, "fstat", real_fstat)

    class Broken:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def read(self, n):
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(images.os, "fdopen", Broken)
    with pytest.raises(ImageDecodeError) as e:
        read_file(f)
    assert str(e.value) == f"{f}: cannot read file (Input/output error)" and e.value.path == str(f)


def test_defaults_one_pixel_images_and_the_exif_guard(monkeypatch):
    """Bugs: the default name in messages changed, a one-pixel-wide image refused as having no size, a bomb's
    message without the file, or an EXIF step that raises losing an otherwise readable image."""
    from PIL import ImageOps

    with pytest.raises(ImageDecodeError) as e:
        decode_image(b"")
    assert str(e.value) == "<bytes>: empty file (0 bytes)"
    assert decode_image(_png(Image.new("RGB", (1, 5)))).size == (1, 5)
    assert decode_image(_png(Image.new("RGB", (5, 1)))).size == (5, 1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageDecodeError) as e:
        decode_image(_png(Image.new("RGB", (12, 12))), "b.png")
    assert e.value.path == "b.png" and str(e.value).startswith("b.png: decompression bomb refused (")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10**9)

    def broken(img):
        raise SyntaxError("bad EXIF block")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    assert decode_image(_png(Image.new("RGB", (4, 3)))).size == (4, 3)


def test_decoding_on_threads_refuses_bombs_alike_and_leaves_the_warning_filters_as_they_were():
    """Bug: decode_image swapped the process's global warning filters (catch_warnings) from several threads at
    once (the server's DecodePool), so threads restored each other's lists and a filter leaked (9 before 2,000
    threaded decodes, 10 after), and a bomb could be refused for one reason or another by timing."""
    import struct
    import warnings
    import zlib

    from toolkit.data.loader import DecodePool
    from toolkit.preprocess import PreprocessConfig

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    # a PNG header claiming 10,000 x 10,000 pixels: past PIL's warning (89 MP), under its hard error
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 10000, 10000, 8, 2, 0, 0, 0))
    bomb = b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IEND", b"")
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buf, format="JPEG")
    items = [(str(i), bomb if i % 2 else buf.getvalue()) for i in range(400)]
    before = list(warnings.filters)
    with DecodePool(8) as pool:
        for _ in range(5):
            b = pool.decode(items, PreprocessConfig(size=16).to_dict())
            reasons = {s.reason.split(" (")[0] for s in b.skipped}
            assert len(b.paths) == 200 and reasons == {"decompression bomb refused"}
    assert warnings.filters == before
