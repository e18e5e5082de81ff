"""Image files -> uint8 RGB pixels with their real levels and orientation, or one line
naming the file: the one decoder of the images upgen reads (captioned folders, icon themes,
profiles, evaluations, the PNGs of pixel records).

What each PIL mode becomes:
- RGB, L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX: PIL's conversion to RGB (CMYK by
  R = (255 - C)(255 - K) / 255 and alike; an embedded ICC profile is not applied).
- With alpha (LA, RGBA, RGBa, PA, and L, RGB or P with a 'transparency' entry, such as a
  palette PNG's transparent index): composited on white by its alpha (`on_white`).
- 16-bit greyscale (I;16, I;16B, I;16L, I;16N from PNG and TIFF; I, as PIL opens a 16-bit
  PGM or a 32-bit integer TIFF): value / 257, so 65535 is 255. Mode I values outside
  0..65535 are refused: their scale is unknown.
- F (32-bit float): values in [0, 1] times 255 (0 black, 1 white); any other range, or
  NaN, is refused with the range it has.
- 16-bit-per-channel RGB(A) PNGs: PIL keeps each channel's high byte, its 8-bit level.
- An EXIF (or XMP) orientation other than 1 is applied first (`ImageOps.exif_transpose`):
  a photo taken upright is upright.

A file PIL cannot decode (truncated, damaged, not an image) is an errors.DataError naming
it. PIL reads pixels lazily (`Image.open` reads the header only), so every check here runs
where the pixels are decoded.
"""
from __future__ import annotations

import io
from typing import BinaryIO, Optional, Union

import numpy as np
from PIL import ExifTags, Image, ImageOps

from upgen import errors

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
_ALPHA = ("LA", "La", "RGBA", "RGBa", "PA")
# What PIL raises on a file it cannot decode: OSError ("image file is truncated",
# UnidentifiedImageError), SyntaxError and ValueError from some plugins' parsers, EOFError,
# and DecompressionBombError (an Exception only).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def on_white(image: Image.Image) -> Image.Image:
  """RGB: the image composited over white by its alpha (a transparent pixel is white)."""
  rgba_HxWx4 = np.asarray(image.convert("RGBA"), np.float32)
  alpha_HxWx1 = rgba_HxWx4[..., 3:] / 255.0
  rgb_HxWx3 = rgba_HxWx4[..., :3] * alpha_HxWx1 + 255.0 * (1.0 - alpha_HxWx1)
  return Image.fromarray(np.round(rgb_HxWx3).astype(np.uint8), "RGB")


def _orientation(image: Image.Image) -> int:
  return int(image.getexif().get(ExifTags.Base.Orientation, 1) or 1)


def upright_size(image: Image.Image) -> tuple[int, int]:
  """(width, height) once the EXIF orientation is applied, from the header alone (the base
  getexif: a PNG's own would decode the pixels to look for an eXIf chunk after them)."""
  w, h = image.size
  orientation = Image.Image.getexif(image).get(ExifTags.Base.Orientation, 1)
  return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _grey_levels(image: Image.Image, where: str) -> Image.Image:
  """A 16-bit, 32-bit integer or float greyscale image -> L (or LA where a 'transparency'
  value marks pixels), by the rules of the module docstring."""
  values_HxW = np.asarray(image)
  if values_HxW.size == 0:
    raise errors.DataError(f"{where}: an empty {image.width}x{image.height} image")
  lo, hi = values_HxW.min(), values_HxW.max()
  if image.mode == "F":
    if not (np.isfinite(values_HxW).all() and lo >= 0.0 and hi <= 1.0):
      raise errors.DataError(
          f"{where}: 32-bit float greyscale (PIL mode F) with values {float(lo):g}..{float(hi):g}"
          "; upgen reads float images as 0..1 (0 black, 1 white): rescale it to 0..1 or save "
          "it as an 8- or 16-bit image")
    grey_HxW = values_HxW.astype(np.float64) * 255.0
  else:
    if image.mode not in _SIXTEEN_BIT and (lo < 0 or hi > 65535):
      raise errors.DataError(
          f"{where}: 32-bit integer greyscale (PIL mode {image.mode}) with values {lo}..{hi}, "
          "outside the 16-bit range 0..65535 upgen reads it in: save it as an 8- or 16-bit "
          "image")
    grey_HxW = values_HxW.astype(np.float64) / 257.0
  grey = Image.fromarray(np.round(grey_HxW).astype(np.uint8), "L")
  transparent = image.info.get("transparency")
  if isinstance(transparent, (int, float)):  # A 16-bit PNG's tRNS: one value is transparent.
    alpha_HxW = np.where(values_HxW == transparent, 0, 255).astype(np.uint8)
    grey = Image.merge("LA", (grey, Image.fromarray(alpha_HxW, "L")))
  return grey


def as_rgb(image: Image.Image, where: str = "image") -> Image.Image:
  """Any PIL image -> an RGB image upright, at its real levels, transparency on white (see
  the module docstring); `where` names it in errors.DataError. An RGB image with nothing to
  do is returned as it is."""
  if image.mode == "RGB" and "transparency" not in image.info and _orientation(image) == 1:
    return image
  if _orientation(image) != 1:
    image = ImageOps.exif_transpose(image)
  if image.mode in _SIXTEEN_BIT or image.mode in ("I", "F"):
    image = _grey_levels(image, where)
  try:
    if image.mode in _ALPHA or "transparency" in image.info:
      return on_white(image)
    return image.convert("RGB")
  except ValueError as e:  # A mode PIL has no conversion for.
    raise errors.DataError(f"{where}: PIL mode {image.mode} does not convert to RGB ({e}); save "
                           "the image as 8-bit RGB or RGBA") from None


def resize_and_crop(image: Image.Image, image_size: int, where: str = "image") -> np.ndarray:
  """RGB (`as_rgb`), shorter side to image_size (bicubic), center crop -> uint8
  image_size x image_size x 3."""
  image = as_rgb(image, where)
  w, h = image.size
  if (w, h) != (image_size, image_size):
    scale = image_size / min(w, h)
    new_w, new_h = max(image_size, round(w * scale)), max(image_size, round(h * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
    image = image.crop((left, top, left + image_size, top + image_size))
  return np.asarray(image, dtype=np.uint8)


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split()) or type(e).__name__


def load_image(file: Union[str, BinaryIO], image_size: Optional[int] = None,
               where: Optional[str] = None) -> np.ndarray:
  """An image file (a path or a binary file object) -> uint8 RGB, image_size x image_size x 3
  (see resize_and_crop), or at its own size when image_size is None. errors.DataError, naming
  `where` (default: the path), for a file PIL cannot decode or a mode it cannot convert."""
  return load_image_sized(file, image_size, where)[0]


def load_image_sized(file: Union[str, BinaryIO], image_size: Optional[int] = None,
                     where: Optional[str] = None) -> tuple[np.ndarray, tuple[int, int]]:
  """load_image, and the image's upright (width, height) before any resizing (what a
  minimum-size filter looks at)."""
  where = where or str(file)
  try:
    with Image.open(file) as image:
      image.load()  # Decode here: a truncated file fails now, inside this try.
      size = upright_size(image)
      if image_size is None:
        return np.asarray(as_rgb(image, where), dtype=np.uint8), size
      return resize_and_crop(image, image_size, where), size
  except errors.UserError:
    raise
  except FileNotFoundError:
    raise errors.NotFound(f"{where}: no such image file") from None
  except _DECODE_ERRORS as e:
    if isinstance(e, OSError) and e.errno is not None:  # The disk, not the image.
      raise errors.StorageError(f"{where}: cannot read the file ({e.strerror})") from None
    raise errors.DataError(f"{where}: not a readable image ({_one_line(e)}): the file is "
                           "truncated, damaged or not an image; replace or remove it") from None


def png_bytes(image_HxWx3: np.ndarray) -> bytes:
  """uint8 RGB pixels as PNG file bytes (pixel records, the generated shapes)."""
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(image_HxWx3, np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()
