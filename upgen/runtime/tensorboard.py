"""TensorBoard event files without TensorFlow.

An event file is a TFRecord file of `Event` protos. We encode the few fields we need on
the protobuf wire format:
  Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
  Summary { repeated Value value = 1; }
  Value   { string tag = 1; float simple_value = 2; Image image = 4; }
  Image   { int32 height = 1; int32 width = 2; int32 colorspace = 3; bytes encoded_image_string = 4; }
"""
from __future__ import annotations

import io
import socket
import struct
import time

import numpy as np
from PIL import Image

from upgen import paths
from upgen.data import tfrecord


def _varint(n: int) -> bytes:
  n &= (1 << 64) - 1  # Negative int64 as two's complement, as protobuf does.
  out = bytearray()
  while True:
    byte = n & 0x7F
    n >>= 7
    if n:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
  return _varint((field << 3) | wire_type)


def _bytes_field(field: int, data: bytes) -> bytes:
  return _key(field, 2) + _varint(len(data)) + data


def _varint_field(field: int, n: int) -> bytes:
  return _key(field, 0) + _varint(n)


def encode_event(wall_time: float, step: int, *, file_version: str = "",
                 values: bytes = b"") -> bytes:
  out = _key(1, 1) + struct.pack("<d", wall_time) + _varint_field(2, step)
  if file_version:
    out += _bytes_field(3, file_version.encode())
  if values:
    out += _bytes_field(5, values)
  return out


def scalar_value(tag: str, value: float) -> bytes:
  body = _bytes_field(1, tag.encode()) + _key(2, 5) + struct.pack("<f", value)
  return _bytes_field(1, body)


def image_value(tag: str, image_HxWxC: np.ndarray) -> bytes:
  image = np.asarray(image_HxWxC, np.uint8)
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  h, w = image.shape[:2]
  channels = image.shape[2] if image.ndim == 3 else 1
  img = (_varint_field(1, h) + _varint_field(2, w) + _varint_field(3, channels) +
         _bytes_field(4, buf.getvalue()))
  return _bytes_field(1, _bytes_field(1, tag.encode()) + _bytes_field(4, img))


class EventWriter:
  """Appends events to logdir/events.out.tfevents.<time>.<host> (logdir may be a gs://
  URL: the file is then uploaded whole on flush, see upgen.paths.open_synced)."""

  def __init__(self, logdir: str):
    paths.makedirs(logdir)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
    self.path = paths.join(logdir, name)
    self._records = tfrecord.TFRecordWriter(self.path, file=paths.open_synced(self.path, "wb"))
    self._records.write(encode_event(time.time(), 0, file_version="brain.Event:2"))

  def scalar(self, tag: str, value: float, step: int) -> None:
    self._records.write(encode_event(time.time(), step, values=scalar_value(tag, value)))

  def image(self, tag: str, image_HxWxC: np.ndarray, step: int) -> None:
    self._records.write(encode_event(time.time(), step, values=image_value(tag, image_HxWxC)))

  def flush(self) -> None:
    self._records.flush()

  def close(self) -> None:
    self._records.close()
