"""Metric sinks: metrics.jsonl rows and TensorBoard event files parsed by protobuf itself."""
import json

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from upgen.data import tfrecord
from upgen.runtime import writers
from upgen import rundir


def _event_class():
  """Event / Summary / Image protos declared here, independently of our encoder."""
  f = descriptor_pb2.FileDescriptorProto(name="event_test.proto", package="t", syntax="proto3")
  T = descriptor_pb2.FieldDescriptorProto

  def msg(name, fields):
    m = f.message_type.add(name=name)
    for fname, number, ftype, label, type_name in fields:
      field = m.field.add(name=fname, number=number, type=ftype, label=label)
      if type_name:
        field.type_name = type_name

  opt, rep = T.LABEL_OPTIONAL, T.LABEL_REPEATED
  msg("Image", [("height", 1, T.TYPE_INT32, opt, ""), ("width", 2, T.TYPE_INT32, opt, ""),
                ("colorspace", 3, T.TYPE_INT32, opt, ""),
                ("encoded_image_string", 4, T.TYPE_BYTES, opt, "")])
  msg("Value", [("tag", 1, T.TYPE_STRING, opt, ""), ("simple_value", 2, T.TYPE_FLOAT, opt, ""),
                ("image", 4, T.TYPE_MESSAGE, opt, ".t.Image")])
  msg("Summary", [("value", 1, T.TYPE_MESSAGE, rep, ".t.Value")])
  msg("Event", [("wall_time", 1, T.TYPE_DOUBLE, opt, ""), ("step", 2, T.TYPE_INT64, opt, ""),
                ("file_version", 3, T.TYPE_STRING, opt, ""),
                ("summary", 5, T.TYPE_MESSAGE, opt, ".t.Summary")])
  pool = descriptor_pool.DescriptorPool()
  pool.Add(f)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Event"))


def test_metrics_jsonl_and_tensorboard_events(tmp_path):
  w = writers.MetricWriter(str(tmp_path))
  w.write_scalars(1, {"loss": np.float32(2.5), "lr": 1e-3})
  w.write_scalars(2, {"loss": float("nan")})
  grid = writers.image_grid(np.full((3, 4, 4, 3), 200, np.uint8), columns=2)
  w.write_images(2, {"samples": grid})
  w.close()
  rows = writers.read_metrics(str(tmp_path))
  assert rows[0] == {"step": 1, "loss": 2.5, "lr": 1e-3} and rows[1]["loss"] == "nan"

  event_cls = _event_class()
  (path,) = (tmp_path / "tensorboard").iterdir()
  events = [event_cls.FromString(r) for r in tfrecord.read_records(str(path))]
  assert events[0].file_version == "brain.Event:2"
  scalars = [(e.step, v.tag, v.simple_value) for e in events for v in e.summary.value
             if not v.HasField("image")]
  assert (1, "loss", 2.5) in scalars and (1, "lr", np.float32(1e-3)) in scalars
  images = [v.image for e in events for v in e.summary.value if v.HasField("image")]
  assert len(images) == 1 and (images[0].height, images[0].width) == grid.shape[:2]
  assert images[0].encoded_image_string.startswith(b"\x89PNG")


def test_truncate_drops_rows_after_the_restored_step(tmp_path):
  with open(tmp_path / rundir.METRICS_FILE, "w") as f:
    for step in range(1, 6):
      f.write(json.dumps({"step": step, "loss": float(step)}) + "\n")
    f.write('{"step": 6, "lo')  # Cut short by a kill.
  writers.truncate_metrics(str(tmp_path), 3)
  assert [r["step"] for r in writers.read_metrics(str(tmp_path))] == [1, 2, 3]


def test_image_grid_layout():
  images = np.stack([np.full((2, 3, 3), i, np.uint8) for i in range(5)])
  grid = writers.image_grid(images, columns=3, pad=1)
  assert grid.shape == (2 * 3 + 1, 3 * 4 + 1, 3)
  assert grid[1, 1, 0] == 0 and grid[1, 5, 0] == 1 and grid[4, 1, 0] == 3
  assert grid[4, 9, 0] == 64  # The empty sixth cell stays padding.
