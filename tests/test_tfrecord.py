"""TFRecord framing, CRC32C, tf.train.Example wire format, record shards and metadata."""
import json
import os
import struct
import time

import numpy as np
import pytest

from upgen.data import example_proto
from upgen.data import records
from upgen.data import tfrecord


# RFC 3720 (iSCSI) B.4 CRC32C test vectors plus the classic "123456789" check value.
@pytest.mark.parametrize("data, crc", [
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (b"", 0x0),
])
def test_crc32c_known_vectors(data, crc):
  assert tfrecord.crc32c(data) == crc
  assert int(tfrecord.crc32c_batch(np.frombuffer(data, np.uint8), [0], [len(data)])[0]) == crc


def test_masked_crc_matches_formula():
  crc = 0xE3069283
  want = ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF
  assert tfrecord.masked_crc32c(b"123456789") == want
  assert int(tfrecord.mask_crc(np.array([crc], np.uint32))[0]) == want


def crc32c_bitwise(data: bytes) -> int:
  """The Castagnoli CRC one bit at a time (reflected polynomial 0x82F63B78): the reference."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def test_batched_crc_matches_bitwise_on_many_lengths():
  rng = np.random.default_rng(0)
  msgs = [rng.integers(0, 256, n, dtype=np.uint8).tobytes()
          for n in [0, 1, 3, 4, 5, 127, 128, 129, 255, 256, 257, 1000, 4096, 20001]]
  buf = np.frombuffer(b"".join(msgs), np.uint8)
  offsets = np.cumsum([0] + [len(m) for m in msgs[:-1]])
  got = tfrecord.crc32c_batch(buf, offsets, [len(m) for m in msgs])
  assert [int(g) for g in got] == [crc32c_bitwise(m) for m in msgs]


def test_frame_layout_of_one_record(tmp_path):
  path = tmp_path / "one.tfrecord"
  with tfrecord.TFRecordWriter(path) as w:
    w.write(b"123456789")
  raw = path.read_bytes()
  length = struct.pack("<Q", 9)
  assert raw == (length + struct.pack("<I", tfrecord.masked_crc32c(length)) + b"123456789"
                 + struct.pack("<I", tfrecord.masked_crc32c(b"123456789")))


def _write(path, n, seed=0):
  rng = np.random.default_rng(seed)
  recs = [rng.integers(0, 256, rng.integers(1, 700), dtype=np.uint8).tobytes() for _ in range(n)]
  with tfrecord.TFRecordWriter(path, flush_every=97) as w:
    for r in recs:
      w.write(r)
  return recs


def test_round_trip_and_random_access(tmp_path):
  recs = _write(tmp_path / "a.tfrecord", 500)
  assert list(tfrecord.read_records(tmp_path / "a.tfrecord")) == recs
  f = tfrecord.IndexedTFRecordFile(tmp_path / "a.tfrecord")
  assert len(f) == 500 and f[0] == recs[0] and f[321] == recs[321] and f[499] == recs[499]


def test_index_of_20k_records_is_fast(tmp_path):
  _write(tmp_path / "big.tfrecord", 20_000)
  start = time.perf_counter()
  offsets, _ = tfrecord.index_records(tmp_path / "big.tfrecord")
  assert len(offsets) == 20_000
  assert time.perf_counter() - start < 5.0


def test_corrupted_byte_names_file_and_offset(tmp_path):
  path = tmp_path / "c.tfrecord"
  recs = _write(path, 50)
  offsets, _ = tfrecord.index_records(path)
  start_of_record_7 = int(offsets[7]) - 12
  raw = bytearray(path.read_bytes())
  raw[int(offsets[7]) + 3] ^= 0x01
  path.write_bytes(bytes(raw))
  want = rf"c\.tfrecord: data CRC mismatch in record 7 at byte offset {start_of_record_7}\b"
  with pytest.raises(tfrecord.CorruptRecordError, match=want):
    tfrecord.index_records(path)
  assert len(recs) == 50


def test_corrupted_length_field_names_offset(tmp_path):
  path = tmp_path / "l.tfrecord"
  _write(path, 10)
  offsets, _ = tfrecord.index_records(path)
  raw = bytearray(path.read_bytes())
  raw[int(offsets[4]) - 12] ^= 0x02  # Lowest byte of record 4's length.
  path.write_bytes(bytes(raw))
  want = rf"l\.tfrecord: length CRC mismatch in record 4 at byte offset {int(offsets[4]) - 12}\b"
  with pytest.raises(tfrecord.CorruptRecordError, match=want):
    tfrecord.index_records(path)


def test_truncated_shard_names_file_and_offset(tmp_path):
  path = tmp_path / "t.tfrecord"
  _write(path, 10)
  offsets, _ = tfrecord.index_records(path)
  raw = path.read_bytes()
  path.write_bytes(raw[:int(offsets[9]) + 5])
  want = rf"t\.tfrecord: truncated record at byte offset {int(offsets[9]) - 12}\b"
  with pytest.raises(tfrecord.CorruptRecordError, match=want):
    tfrecord.index_records(path)
  path.write_bytes(raw[:int(offsets[9]) - 5])
  want = rf"t\.tfrecord: truncated record header at byte offset {int(offsets[9]) - 12}\b"
  with pytest.raises(tfrecord.CorruptRecordError, match=want):
    tfrecord.index_records(path)


def test_example_encoding_matches_hand_computed_bytes():
  got = example_proto.encode_example({"ids": np.array([1, 300], np.int64), "id": b"ab"})
  # Features sorted by key: "id" then "ids".
  # Entry{key=1: "id", value=2: Feature{bytes_list=1: BytesList{value=1: "ab"}}}.
  entry_id = (bytes([0x0A, 0x0C, 0x0A, 0x02]) + b"id"
              + bytes([0x12, 0x06, 0x0A, 0x04, 0x0A, 0x02]) + b"ab")
  # Int64List packed: value=1 (0x01), value=300 (0xAC 0x02).
  entry_ids = (bytes([0x0A, 0x0E, 0x0A, 0x03]) + b"ids"
               + bytes([0x12, 0x07, 0x1A, 0x05, 0x0A, 0x03, 0x01, 0xAC, 0x02]))
  features = entry_id + entry_ids
  assert got == bytes([0x0A, len(features)]) + features
  decoded = example_proto.decode_example(got)
  assert decoded["id"] == [b"ab"] and decoded["ids"].tolist() == [1, 300]


def _protobuf_example_class():
  """tf.train.Example built from its .proto definition with the protobuf runtime."""
  from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
  f = descriptor_pb2.FileDescriptorProto(name="example_test.proto", package="tensorflow",
                                         syntax="proto3")
  T = descriptor_pb2.FieldDescriptorProto
  def msg(name, fields, options=None):
    m = f.message_type.add(name=name)
    for fname, number, ftype, label, type_name in fields:
      fd = m.field.add(name=fname, number=number, type=ftype, label=label)
      if type_name:
        fd.type_name = type_name
    return m
  rep, opt = T.LABEL_REPEATED, T.LABEL_OPTIONAL
  msg("BytesList", [("value", 1, T.TYPE_BYTES, rep, None)])
  msg("FloatList", [("value", 1, T.TYPE_FLOAT, rep, None)])
  msg("Int64List", [("value", 1, T.TYPE_INT64, rep, None)])
  feature = msg("Feature", [("bytes_list", 1, T.TYPE_MESSAGE, opt, ".tensorflow.BytesList"),
                            ("float_list", 2, T.TYPE_MESSAGE, opt, ".tensorflow.FloatList"),
                            ("int64_list", 3, T.TYPE_MESSAGE, opt, ".tensorflow.Int64List")])
  feature.oneof_decl.add(name="kind")
  for fd in feature.field:
    fd.oneof_index = 0
  features = msg("Features",
                 [("feature", 1, T.TYPE_MESSAGE, rep, ".tensorflow.Features.FeatureEntry")])
  entry = features.nested_type.add(name="FeatureEntry")
  entry.field.add(name="key", number=1, type=T.TYPE_STRING, label=opt)
  entry.field.add(name="value", number=2, type=T.TYPE_MESSAGE, label=opt,
                  type_name=".tensorflow.Feature")
  entry.options.map_entry = True
  msg("Example", [("features", 1, T.TYPE_MESSAGE, opt, ".tensorflow.Features")])
  pool = descriptor_pool.DescriptorPool()
  pool.Add(f)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


def test_example_interoperates_with_protobuf_runtime():
  Example = _protobuf_example_class()
  ours = example_proto.encode_example({
      "image_tokens": np.array([0, 5, 1023, 2**40], np.int64), "text_tokens": np.array([-3, 7]),
      "caption": "un chat rouge".encode(), "score": np.array([0.5, -2.0], np.float32),
      "empty": np.zeros(0, np.int64)})
  parsed = Example.FromString(ours)
  feats = parsed.features.feature
  assert list(feats["image_tokens"].int64_list.value) == [0, 5, 1023, 2**40]
  assert list(feats["text_tokens"].int64_list.value) == [-3, 7]
  assert feats["caption"].bytes_list.value == [b"un chat rouge"]
  assert list(feats["score"].float_list.value) == [0.5, -2.0]
  assert feats["empty"].WhichOneof("kind") == "int64_list"
  # Protobuf's own serialization (and an unpacked int64 list) decodes with ours.
  theirs = Example()
  theirs.features.feature["ids"].int64_list.value.extend([3, 2**33, -1])
  theirs.features.feature["name"].bytes_list.value.append(b"x")
  decoded = example_proto.decode_example(theirs.SerializeToString())
  assert decoded["ids"].tolist() == [3, 2**33, -1] and decoded["name"] == [b"x"]
  unpacked_ids = bytes([0x1A, 0x04, 0x08, 0x03, 0x08, 0x04])  # Int64List{value: 3, value: 4}
  entry = bytes([0x0A, 0x01]) + b"u" + bytes([0x12, len(unpacked_ids)]) + unpacked_ids
  blob = bytes([0x0A, len(entry) + 2, 0x0A, len(entry)]) + entry
  assert example_proto.decode_example(blob)["u"].tolist() == [3, 4]
  assert [v for v in Example.FromString(blob).features.feature["u"].int64_list.value] == [3, 4]


TEXT_INFO = {"identity": {"name": "t"}, "vocab_size": 50, "pad_id": 0, "mask_id": 1, "bos_id": 2,
             "eos_id": 3, "path": "/t"}
IMAGE_INFO = {"identity": {"name": "i"}, "codebook_size": 64, "grid": [2, 2], "image_size": 8,
              "path": "/i"}


def _examples(n):
  for i in range(n):
    yield {"image_tokens": np.arange(4) + i, "text_tokens": np.arange(1 + i % 5),
           "caption": f"c{i}", "id": f"e{i}"}


def test_write_split_and_metadata(tmp_path):
  out = str(tmp_path)
  info = records.write_split(out, "train", _examples(11), num_shards=3)
  assert info["shards"] == [f"train-0000{i}-of-00003.tfrecord" for i in range(3)]
  assert info["records_per_shard"] == [4, 4, 3] and info["kind"] == "paired"
  assert info["max_text_len"] == 5
  text, image = TEXT_INFO, IMAGE_INFO
  records.update_metadata(out, "train", info, text, image)
  meta = records.read_metadata(out)
  assert meta["splits"]["train"]["sha256"] == info["sha256"] and meta["text_tokenizer"] == text
  records.verify_sha256(out, "train")
  src = records.RecordDataSource(out, "train", image_vocab_size=64, text_vocab_size=50)
  assert len(src) == 11
  got = sorted((src[i]["id"], src[i]["image_tokens"].tolist()) for i in range(11))
  assert got == sorted((f"e{i}", (np.arange(4) + i).tolist()) for i in range(11))
  with pytest.raises(records.MetadataError, match="image_tokenizer"):
    records.update_metadata(out, "val", info, text, dict(image, codebook_size=65))


def test_read_metadata_names_file_and_key(tmp_path):
  info = records.write_split(str(tmp_path), "train", _examples(2), num_shards=1)
  meta = {"format_version": 1, "text_tokenizer": {"identity": {}, "vocab_size": "50", "pad_id": 0,
          "mask_id": 1, "bos_id": 2, "eos_id": 3, "path": ""}, "image_tokenizer": None,
          "splits": {"train": info}}
  (tmp_path / "metadata.json").write_text(json.dumps(meta))
  want = r"metadata\.json: key 'text_tokenizer\.vocab_size' must be of type int"
  with pytest.raises(records.MetadataError, match=want):
    records.read_metadata(str(tmp_path))
  meta["text_tokenizer"]["vocab_size"] = 50
  del meta["splits"]["train"]["sha256"]
  (tmp_path / "metadata.json").write_text(json.dumps(meta))
  with pytest.raises(records.MetadataError, match=r"key 'splits\.train\.sha256' is missing"):
    records.read_metadata(str(tmp_path))
  os.remove(tmp_path / "metadata.json")
  with pytest.raises(records.MetadataError, match="not found"):
    records.read_metadata(str(tmp_path))


def test_out_of_vocab_id_names_file_record_and_id(tmp_path):
  def examples():
    yield from _examples(3)
    yield {"image_tokens": np.array([1, 2, 64, 3]), "text_tokens": [1], "caption": "bad",
           "id": "bad"}
  info = records.write_split(str(tmp_path), "train", examples(), num_shards=1)
  assert info["id_range"] == {"image_tokens": [0, 64], "text_tokens": [0, 2]}
  records.update_metadata(str(tmp_path), "train", info, TEXT_INFO, IMAGE_INFO)
  with pytest.raises(records.MetadataError, match="id_range.image_tokens' \\[0, 64\\]"):
    records.RecordDataSource(str(tmp_path), "train")  # Found at open from the written range.
  # Records written before the range was recorded: each record's ids checked as it is read.
  del info["id_range"]
  records.update_metadata(str(tmp_path), "train", info, TEXT_INFO, IMAGE_INFO, replace=True)
  src = records.RecordDataSource(str(tmp_path), "train", image_vocab_size=64, text_vocab_size=50)
  src[2]
  want = r"train-00000-of-00001\.tfrecord: record 3: image_tokens id 64 outside"
  with pytest.raises(ValueError, match=want):
    src[3]
