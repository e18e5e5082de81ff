"""upgen.data.images: every PIL mode decoded at its real levels and orientation, or refused in
one line naming the file; a truncated file is a DataError where its pixels are decoded."""
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from upgen import errors
from upgen.data import images
from upgen.data import sources
from upgen.datasets import profile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _save(image, path):
  image.save(path)
  return str(path)


def _png(w, h, bit_depth, colour_type, pixels):
  """A PNG written by hand (PIL writes no 16-bit RGB)."""
  chunk = lambda t, d: (struct.pack(">I", len(d)) + t + d
                        + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF))
  rows = b"".join(b"\x00" + np.ascontiguousarray(row).tobytes() for row in pixels)
  header = struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
          + chunk(b"IEND", b""))


def test_sixteen_bit_grey_keeps_its_levels(tmp_path):
  mid_grey_HxW = np.full((8, 8), 32768, np.uint16)  # Half of 65535: mid grey, not white.
  png = _save(Image.fromarray(mid_grey_HxW), tmp_path / "grey16.png")
  assert Image.open(png).mode == "I;16"
  assert sources.load_image(png).mean() == 128  # convert("RGB") clipped it to 255.
  assert sources.load_image(png, 4).mean() == 128
  big_endian = _save(Image.frombytes("I;16B", (8, 8), mid_grey_HxW.astype(">u2").tobytes()),
                     tmp_path / "grey16b.tif")
  assert Image.open(big_endian).mode == "I;16B" and sources.load_image(big_endian).mean() == 128
  # A 16-bit PGM opens as mode I; its levels are 16-bit ones too.
  pgm = tmp_path / "grey.pgm"
  pgm.write_bytes(b"P5\n2 1\n65535\n" + np.array([65535, 16384], ">u2").tobytes())
  assert Image.open(pgm).mode == "I"
  assert sources.load_image(str(pgm))[0, :, 0].tolist() == [255, 64]


def test_float_and_wide_integer_images_scale_or_are_refused(tmp_path):
  ramp_HxW = np.array([[0.0, 0.25, 0.5, 1.0]], np.float32)
  good = _save(Image.fromarray(ramp_HxW), tmp_path / "ramp.tif")
  assert Image.open(good).mode == "F"
  assert sources.load_image(good)[0, :, 1].tolist() == [0, 64, 128, 255]  # Was all 0.
  bright = _save(Image.fromarray(ramp_HxW * 200), tmp_path / "bright.tif")
  with pytest.raises(errors.DataError, match=r"bright.tif: 32-bit float greyscale \(PIL mode F\)"
                     r" with values 0..200; upgen reads float images as 0..1"):
    sources.load_image(bright)
  wide = _save(Image.fromarray(np.array([[0, 70000]], np.int32)), tmp_path / "wide.tif")
  assert Image.open(wide).mode == "I"
  with pytest.raises(errors.DataError, match=r"wide.tif: 32-bit integer greyscale \(PIL mode I\) "
                     "with values 0..70000, outside the 16-bit range"):
    sources.load_image(wide)


def test_transparency_is_composited_on_white(tmp_path):
  # A palette PNG whose index 0 (black) is transparent: white there, not black.
  palette = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
  palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
  png = tmp_path / "palette.png"
  palette.save(png, transparency=0)
  assert Image.open(png).mode == "P" and Image.open(png).info["transparency"] == 0
  assert sources.load_image(str(png)).tolist() == [[[255] * 3, [200, 10, 10]],
                                                   [[200, 10, 10], [255] * 3]]
  # LA and RGBA: half-transparent black over white is 127; PA (a TIFF) as well.
  la = _save(Image.fromarray(np.array([[[0, 128], [50, 0]]], np.uint8), "LA"), tmp_path / "la.png")
  assert sources.load_image(la)[0, :, 0].tolist() == [127, 255]
  rgba_1x2x4 = np.array([[[0, 0, 0, 128], [10, 20, 30, 255]]], np.uint8)
  rgba = _save(Image.fromarray(rgba_1x2x4, "RGBA"), tmp_path / "rgba.png")
  assert sources.load_image(rgba).tolist() == [[[127] * 3, [10, 20, 30]]]
  pa = Image.fromarray(np.array([[[1, 0], [1, 255]]], np.uint8), "PA")
  pa.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
  assert sources.load_image(_save(pa, tmp_path / "pa.tif")).tolist() == [[[255] * 3,
                                                                          [200, 10, 10]]]
  # A 16-bit grey PNG with a transparent value (tRNS): white there, the rest at its level.
  grey16 = Image.fromarray(np.array([[0, 32768]], np.uint16))
  grey16.save(tmp_path / "grey16t.png", transparency=0)
  assert sources.load_image(str(tmp_path / "grey16t.png"))[0, :, 0].tolist() == [255, 128]


def test_colour_spaces_and_bit_depths_keep_their_levels(tmp_path):
  """What PIL already converted right, pinned: 1-bit, CMYK, YCbCr, LAB, 16-bit RGB."""
  one_bit = _save(Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1"),
                  tmp_path / "bit.png")
  assert sources.load_image(one_bit)[0, :, 0].tolist() == [0, 255]
  cmyk = Image.new("CMYK", (16, 16), (128, 0, 0, 128))  # Half cyan over half black.
  for name in ("cmyk.jpg", "cmyk.tif"):
    assert Image.open(_save(cmyk, tmp_path / name)).mode == "CMYK"
    np.testing.assert_allclose(sources.load_image(str(tmp_path / name))[0, 0], (63, 127, 127),
                               atol=2)
  ycbcr = _save(Image.new("YCbCr", (4, 4), (128, 128, 128)), tmp_path / "ycbcr.tif")
  assert Image.open(ycbcr).mode == "YCbCr" and sources.load_image(ycbcr)[0, 0].tolist() == [128] * 3
  lab = _save(Image.new("LAB", (4, 4), (128, 128, 128)), tmp_path / "lab.tif")  # L* 50 grey.
  assert Image.open(lab).mode == "LAB"
  np.testing.assert_allclose(sources.load_image(lab)[0, 0], (119, 119, 119), atol=1)
  # 16 bits per channel (PNG colour type 2): PIL keeps each channel's high byte.
  rgb16_4x4x3 = np.broadcast_to(np.array([65535, 32768, 256], ">u2"), (4, 4, 3))
  png = tmp_path / "rgb16.png"
  png.write_bytes(_png(4, 4, 16, 2, rgb16_4x4x3))
  assert sources.load_image(str(png))[0, 0].tolist() == [255, 128, 1]


def test_exif_orientation_is_applied(tmp_path):
  pixels_8x16x3 = np.zeros((8, 16, 3), np.uint8)  # Stored landscape: red left, blue right.
  pixels_8x16x3[:, :8], pixels_8x16x3[:, 8:] = (255, 0, 0), (0, 0, 255)
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view.
  jpeg = tmp_path / "photo.jpg"
  Image.fromarray(pixels_8x16x3).save(jpeg, exif=exif, quality=95)
  upright_16x8x3 = sources.load_image(str(jpeg))
  assert upright_16x8x3.shape == (16, 8, 3)  # Portrait, as the camera saw it.
  assert upright_16x8x3[2, 4, 0] > 200 and upright_16x8x3[13, 4, 2] > 200  # Red on top.
  with Image.open(jpeg) as image:
    assert images.upright_size(image) == (8, 16)
  sources.write_captions(str(tmp_path), [{"image": "photo.jpg", "caption": "a photo"}])
  sizes = profile.profile(str(tmp_path), image_size=8)["images"]
  assert (sizes["width"]["max"], sizes["height"]["max"]) == (8, 16)


def test_truncated_files_are_one_line_data_errors(tmp_path):
  (tmp_path / "images").mkdir()
  noise_32x32x3 = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
  _save(Image.fromarray(noise_32x32x3), tmp_path / "images" / "good.png")
  for name in ("cut.png", "cut.jpg"):
    whole = tmp_path / ("whole" + os.path.splitext(name)[1])
    Image.fromarray(noise_32x32x3).save(whole)
    (tmp_path / "images" / name).write_bytes(whole.read_bytes()[:len(whole.read_bytes()) // 2])
    path = str(tmp_path / "images" / name)
    with Image.open(path):  # The header reads: only decoding the pixels fails.
      pass
    with pytest.raises(errors.DataError, match=f"{name}: not a readable image \\(image file is "
                       "truncated.*replace or remove it"):
      sources.load_image(path, 16)
  sources.write_captions(str(tmp_path), [{"image": "images/good.png", "caption": "noise"},
                                         {"image": "images/cut.png", "caption": "cut noise"}])
  with pytest.raises(errors.DataError, match=r"captions.jsonl:2: .*images/cut.png: not a "
                     "readable image"):
    sources.ImageFolderSource(str(tmp_path), 16)[1]
  run = subprocess.run([sys.executable, "-m", "upgen.cli", "data", "profile", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, check=False)
  assert run.returncode == 2, run.stderr
  assert run.stderr.count("\n") == 1, run.stderr  # One line, no traceback.
  assert run.stderr.startswith("upgen data profile: error: ") and "cut.png" in run.stderr
