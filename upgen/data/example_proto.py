"""`tf.train.Example` encoding/decoding by hand on the protobuf wire format.

Messages and field numbers (tensorflow/core/example/{example,feature}.proto):

  Example    { Features features = 1; }
  Features   { map<string, Feature> feature = 1; }   # entry: { string key = 1; Feature value = 2; }
  Feature    { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
                            Int64List int64_list = 3; } }
  BytesList  { repeated bytes value = 1; }
  FloatList  { repeated float value = 1 [packed = true]; }
  Int64List  { repeated int64 value = 1 [packed = true]; }

Wire types: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32; a tag is
(field_number << 3) | wire_type as a varint. The writer emits int64/float lists packed
(one length-delimited field) and map entries sorted by key; the reader accepts packed and
unpacked repeated scalars and skips unknown fields, like TF's parser. Negative int64 values
are 10-byte two's-complement varints.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence, Union

import numpy as np

FeatureValue = Union[np.ndarray, Sequence[int], Sequence[float], Sequence[bytes], bytes, str]

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5
_FEATURE_KINDS = {1: "bytes", 2: "float", 3: "int64"}


class ProtoDecodeError(ValueError):
  """Bytes that are not a well-formed tf.train.Example."""


def _varint(value: int) -> bytes:
  value &= (1 << 64) - 1
  out = bytearray()
  while value >= 0x80:
    out.append((value & 0x7F) | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def encode_varints(values: np.ndarray) -> bytes:
  """Packed varint encoding of int64 values (vectorized)."""
  values_N = np.asarray(values, dtype=np.int64).view(np.uint64)
  if len(values_N) == 0:
    return b""
  if values_N.max() < 0x80:
    return values_N.astype(np.uint8).tobytes()
  nbytes_N = np.ones(len(values_N), np.int64)
  for k in range(1, 10):
    nbytes_N += values_N >= np.uint64(1 << (7 * k))
  value_T = np.repeat(values_N, nbytes_N)
  first_N = np.cumsum(nbytes_N) - nbytes_N
  pos_T = np.arange(len(value_T)) - np.repeat(first_N, nbytes_N)
  more_T = pos_T < np.repeat(nbytes_N, nbytes_N) - 1
  byte_T = (value_T >> (7 * pos_T).astype(np.uint64)) & np.uint64(0x7F)
  return (byte_T.astype(np.uint8) | (more_T.astype(np.uint8) << 7)).tobytes()


def decode_varints(data: bytes) -> np.ndarray:
  """Inverse of encode_varints -> int64 array (vectorized)."""
  raw_T = np.frombuffer(data, np.uint8)
  if len(raw_T) == 0:
    return np.zeros(0, np.int64)
  if raw_T.max() < 0x80:
    return raw_T.astype(np.int64)
  if raw_T[-1] >= 0x80:
    raise ProtoDecodeError("packed varint list ends inside a varint")
  ends_N = np.flatnonzero(raw_T < 0x80)
  starts_N = np.concatenate([[0], ends_N[:-1] + 1])
  if (ends_N - starts_N).max() >= 10:
    raise ProtoDecodeError("varint longer than 10 bytes")
  pos_T = np.arange(len(raw_T)) - np.repeat(starts_N, ends_N - starts_N + 1)
  shifted_T = (raw_T & 0x7F).astype(np.uint64) << (7 * pos_T).astype(np.uint64)
  return np.bitwise_or.reduceat(shifted_T, starts_N).view(np.int64)


def _field(number: int, payload: bytes) -> bytes:
  return _varint((number << 3) | _LEN) + _varint(len(payload)) + payload


def _encode_feature(name: str, value: FeatureValue) -> bytes:
  """Feature message for `value`: bytes/str/list of bytes -> bytes_list, ints -> int64_list,
  floats -> float_list (chosen from the numpy dtype of the value)."""
  if isinstance(value, (bytes, str)):
    value = [value]
  if isinstance(value, (list, tuple)) and value and isinstance(value[0], (bytes, str)):
    items = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in value]
    return _field(1, b"".join(_field(1, item) for item in items))
  array = np.asarray(value)
  if array.ndim != 1:
    array = array.reshape(-1)
  if isinstance(value, (list, tuple)) and not value:
    array = np.zeros(0, np.int64)  # An empty python list is taken as an int64 list.
  if array.dtype.kind in "iub":
    packed = encode_varints(array.astype(np.int64))
    return _field(3, _field(1, packed) if packed else b"")
  if array.dtype.kind == "f":
    packed = array.astype("<f4").tobytes()
    return _field(2, _field(1, packed) if packed else b"")
  raise TypeError(f"feature {name!r}: unsupported value dtype {array.dtype}")


def encode_example(features: Mapping[str, FeatureValue]) -> bytes:
  """Serialized tf.train.Example with the given features (map entries sorted by key)."""
  entries = b"".join(
      _field(1, _field(1, key.encode("utf-8")) + _field(2, _encode_feature(key, features[key])))
      for key in sorted(features))
  return _field(1, entries)


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
  result, shift = 0, 0
  while True:
    if pos >= end:
      raise ProtoDecodeError(f"varint runs past the end of its message at byte {pos}")
    b = data[pos]
    pos += 1
    result |= (b & 0x7F) << shift
    if b < 0x80:
      return result, pos
    shift += 7
    if shift >= 70:
      raise ProtoDecodeError(f"varint longer than 10 bytes at byte {pos}")


def _fields(data: bytes, start: int, end: int) -> list[tuple[int, int, Any]]:
  """(field_number, wire_type, value) of one message's fields; LEN values are (start, end)."""
  out = []
  pos = start
  while pos < end:
    tag = data[pos]
    if tag < 0x80:  # One-byte tags and lengths are the common case: no call.
      pos += 1
    else:
      tag, pos = _read_varint(data, pos, end)
    number, wire = tag >> 3, tag & 7
    if wire == _LEN:
      length = data[pos] if pos < end else 0x80
      if length < 0x80:
        pos += 1
      else:
        length, pos = _read_varint(data, pos, end)
      value, pos = (pos, pos + length), pos + length
    elif wire == _VARINT:
      value, pos = _read_varint(data, pos, end)
    elif wire == _FIXED64:
      value, pos = data[pos:pos + 8], pos + 8
    elif wire == _FIXED32:
      value, pos = data[pos:pos + 4], pos + 4
    else:
      raise ProtoDecodeError(f"unsupported wire type {wire} for field {number} at byte {pos}")
    if pos > end:
      raise ProtoDecodeError(f"field {number} runs past the end of its message (byte {end})")
    out.append((number, wire, value))
  return out


def decode_list(data: bytes, start: int, end: int, kind: str):
  """The values of one list message data[start:end] of `kind` ("bytes", "float", "int64")."""
  if kind == "bytes":
    return [data[v[0]:v[1]] for n, w, v in _fields(data, start, end) if n == 1 and w == _LEN]
  chunks = []
  for number, wire, value in _fields(data, start, end):
    if number != 1:
      continue
    if wire == _LEN:  # Packed.
      s, e = value
      chunks.append(decode_varints(data[s:e]) if kind == "int64"
                    else np.frombuffer(data[s:e], "<f4").astype(np.float32))
    elif kind == "int64" and wire == _VARINT:
      chunks.append(np.array([value], np.uint64).view(np.int64))
    elif kind == "float" and wire == _FIXED32:
      chunks.append(np.frombuffer(value, "<f4").astype(np.float32))
    else:
      raise ProtoDecodeError(f"{kind}_list value with wire type {wire}")
  dtype = np.int64 if kind == "int64" else np.float32
  return np.concatenate(chunks).astype(dtype) if chunks else np.zeros(0, dtype)


def feature_spans(data: bytes) -> dict[str, tuple[str, int, int]]:
  """{name: (kind, start, end)}: where each feature's BytesList/FloatList/Int64List message
  lies in `data` (kind "bytes" / "float" / "int64"; a feature with no kind set is an empty
  int64 list). Duplicate map keys keep the last entry (protobuf map semantics)."""
  out = {}
  for number, wire, value in _fields(data, 0, len(data)):
    if number != 1 or wire != _LEN:
      continue
    for f_number, f_wire, (entry_s, entry_e) in _fields(data, *value):
      if f_number != 1 or f_wire != _LEN:
        continue
      key, span = "", ("int64", entry_e, entry_e)
      for e_number, e_wire, e_value in _fields(data, entry_s, entry_e):
        if e_number == 1 and e_wire == _LEN:
          key = data[e_value[0]:e_value[1]].decode("utf-8")
        elif e_number == 2 and e_wire == _LEN:
          for k_number, k_wire, k_value in _fields(data, *e_value):
            if k_number in _FEATURE_KINDS and k_wire == _LEN:
              span = (_FEATURE_KINDS[k_number], *k_value)
      out[key] = span
  return out


def packed_payload(data: bytes, start: int, end: int) -> tuple[int, int] | None:
  """Span of the packed values of the list message data[start:end]; None when the values
  are not stored as (at most) one packed field (then use decode_example)."""
  fields = _fields(data, start, end)
  if not fields:
    return start, start
  if len(fields) == 1 and fields[0][0] == 1 and fields[0][1] == _LEN:
    return fields[0][2]
  return None


def decode_example(data: bytes) -> dict[str, list[bytes] | np.ndarray]:
  """Parses a serialized tf.train.Example -> {name: list[bytes] | int64 array | float32 array}."""
  data = bytes(data)
  return {key: decode_list(data, start, end, kind)
          for key, (kind, start, end) in feature_spans(data).items()}
