"""TensorBoard event files without TensorFlow: tensorboardX's Event and Summary protos,
written as TFRecords through upgen.paths (so a gs:// workdir works as it does for records and
checkpoints; tensorboardX's own writer has its own cloud code).
"""
from __future__ import annotations

import socket
import time
from typing import Optional

import numpy as np
from tensorboardX import summary as tbx_summary
from tensorboardX.proto import event_pb2
from tensorboardX.proto import summary_pb2

from upgen import paths
from upgen.data import tfrecord


def encode_event(wall_time: float, step: int, *, file_version: str = "",
                 summary: Optional[summary_pb2.Summary] = None) -> bytes:
  """One serialized Event."""
  event = event_pb2.Event(wall_time=wall_time, step=step)
  if file_version:
    event.file_version = file_version
  if summary is not None:
    event.summary.CopyFrom(summary)
  return event.SerializeToString()


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
    self._records.write(encode_event(time.time(), step,
                                     summary=tbx_summary.scalar(tag, float(value))))

  def image(self, tag: str, image_HxWxC: np.ndarray, step: int) -> None:
    """A uint8 image (H x W x 3, or H x W), stored as PNG."""
    image = np.asarray(image_HxWxC, np.uint8)
    if image.ndim == 2:
      image = image[..., None]
    self._records.write(encode_event(time.time(), step, summary=tbx_summary.image(
        tag, image, dataformats="HWC")))

  def flush(self) -> None:
    self._records.flush()

  def close(self) -> None:
    self._records.close()
