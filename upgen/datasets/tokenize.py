"""`upgen tokenize`: raw images + captions -> pre-tokenized record shards + metadata.json.

  upgen tokenize --source DIR|tfds:NAME|wds:PATTERN|hf:PATH --out OUT \
      --text-tokenizer PATH --image-tokenizer WORKDIR [--splits train,val,test] \
      [--num-shards N] [--val-fraction 0.05] [--kind paired|image|text] [--batch-size 64] \
      [--pixels [--image-size S]] [--image-key image] [--caption-key caption] \
      [--max-bad-fraction F]

--pixels also stores each resized, center-cropped image as PNG bytes in its record (the
families that work in pixels read them); --image-tokenizer is then optional (records
without image tokens), and --image-size gives the size when there is none.

DIR either has one sub-folder per split (DIR/train/captions.jsonl, ...; by default every
one of train, val, test that exists is tokenized) or is a single folder
(DIR/captions.jsonl) from which a deterministic `--val-fraction` is held out as "val".
With tfds:NAME, `--splits` names TFDS splits, optionally renamed: `train,val=validation`.
wds:PATTERN (webdataset tar shards) and hf:PATH (a Hugging Face save_to_disk folder or
parquet files) are upgen/data/web_sources.py; `--val-fraction` is held out of them as of a
single folder, except from a DatasetDict folder, whose splits `--splits` names.

Bad examples (errors.BadExample: an undecodable image, a missing caption, a tar member with
no pair) are skipped and counted per reason in the split's metadata ("skipped") and the
summary while they are at most --max-bad-fraction of the examples seen; above it the job
stops with one line. The default is 0 for folders and TFDS (the first bad example stops the
job, naming it: such data was curated by hand) and WEB_MAX_BAD_FRACTION for wds: and hf:.

Tokenizer protocol (upgen/tokenizers/text.py, upgen/tokenizers/image.py):
  text:  .encode_batch(list[str]) -> list[list[int]], .vocab_size, .pad_id, .mask_id,
         .bos_id, .eos_id, .identity() -> dict, .path
  image: .encode(uint8 BxHxWx3) -> int32 Bxhxw, .codebook_size, .grid, .image_size,
         .identity() -> dict, .path
"""
from __future__ import annotations

import argparse
import concurrent.futures
import functools
import io
import math
import os
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
from PIL import Image

from upgen import errors
from upgen import paths
from upgen.data import records
from upgen.data import sources
from upgen.data import web_sources
from upgen.runtime import progress as progress_lib
from upgen.tokenizers import image
from upgen.tokenizers import text

SPLIT_NAMES = ("train", "val", "test")
RECORDS_PER_SHARD = 10_000  # Default shard size when --num-shards is not given.
WEB_MAX_BAD_FRACTION = 0.01  # --max-bad-fraction's default for wds: and hf: sources.
SKIP_CHECK_AFTER = 1000  # Examples seen before the bad fraction is checked (and at the end).
FIRST_SKIPPED = 5  # Ids named per skip reason.


class Skipped:
  """The examples a source could not give (errors.BadExample), counted per reason with the
  first FIRST_SKIPPED ids; `max_fraction` 0 re-raises the first one."""

  def __init__(self, max_fraction: float = 0.0, desc: str = "tokenize"):
    self.max_fraction, self.desc = max_fraction, desc
    self.reasons: dict[str, dict[str, Any]] = {}
    self.count = 0

  def add(self, e: errors.BadExample) -> None:
    if self.max_fraction == 0:
      raise e
    entry = self.reasons.setdefault(e.reason, {"count": 0, "first": []})
    entry["count"] += 1
    if len(entry["first"]) < FIRST_SKIPPED:
      entry["first"].append(e.example_id)
    self.count += 1

  def check(self, seen: int, final: bool = False) -> None:
    """errors.DataError when more than max_fraction of the `seen` examples were skipped
    (checked once SKIP_CHECK_AFTER were seen, and at the end whatever their number)."""
    if (final or seen >= SKIP_CHECK_AFTER) and seen and self.count > self.max_fraction * seen:
      raise errors.DataError(
          f"{self.desc}: {self.count} of {seen} examples skipped ({self.summary()}), above "
          f"--max-bad-fraction {self.max_fraction:g}; fix or remove them, or raise the flag")

  def summary(self) -> str:
    return "; ".join(f"{reason} {e['count']}: {', '.join(e['first'])}"
                     + (", ..." if e["count"] > len(e["first"]) else "")
                     for reason, e in sorted(self.reasons.items()))


def _fetch(get: Any, index: int) -> Any:
  """get(index), or the errors.BadExample it raised (counted by the caller in order)."""
  try:
    return get(index)
  except errors.BadExample as e:
    return e


def _check_ids(ids: np.ndarray, limit: int, what: str, example_id: str) -> None:
  if len(ids) and (ids.min() < 0 or ids.max() >= limit):
    bad = int(ids[(ids < 0) | (ids >= limit)][0])
    raise errors.DataError(
        f"{what} returned id {bad} outside [0, {limit}) for example {example_id!r}")


def png_bytes(image_HxWx3: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.asarray(image_HxWx3, np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


def _tokenized(source: Any, kind: str, text_tokenizer: Any, image_tokenizer: Any,
               batch_size: int, progress: bool, desc: str, pixels: bool = False,
               skipped: Optional[Skipped] = None) -> Iterator[dict[str, Any]]:
  """Yields record dicts for every example of `source`, tokenizing `batch_size` at a time;
  the examples it cannot give go to `skipped` (default: strict, the first one raises)."""
  skipped = skipped or Skipped()

  def caption_example(i: int) -> dict[str, Any]:
    return {"caption": source.caption(i), "id": source.example_id(i)}

  with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool, \
      progress_lib.bar(len(source), desc=desc, disable=not progress, unit="ex") as bar:
    for start in range(0, len(source), batch_size):
      indices = range(start, min(start + batch_size, len(source)))
      get = caption_example if kind == "text" else source.__getitem__
      examples = []
      for got in pool.map(functools.partial(_fetch, get), indices):
        if isinstance(got, errors.BadExample):
          skipped.add(got)
        else:
          examples.append(got)
      skipped.check(indices.stop, final=indices.stop == len(source))
      bar.update(len(indices))
      if not examples:
        continue
      image_tokens = [None] * len(examples)
      text_tokens = [None] * len(examples)
      pngs = [None] * len(examples)
      if kind != "text" and pixels:
        pngs = list(pool.map(png_bytes, [e["image"] for e in examples]))
      if kind != "text" and image_tokenizer is not None:
        images_BxHxWx3 = np.stack([e["image"] for e in examples])
        tokens_Bxhxw = np.asarray(image_tokenizer.encode(images_BxHxWx3))
        want = (len(examples), *tuple(image_tokenizer.grid))
        if tokens_Bxhxw.shape != want:
          raise errors.DataError(f"image tokenizer {image_tokenizer.path}: encode returned shape "
                                 f"{tokens_Bxhxw.shape}, expected {want}")
        image_tokens = list(tokens_Bxhxw.reshape(len(examples), -1).astype(np.int64))
      if kind != "image":
        text_tokens = [np.asarray(t, np.int64) for t in
                       text_tokenizer.encode_batch([e["caption"] for e in examples])]
      for example, image_ids, text_ids, png in zip(examples, image_tokens, text_tokens, pngs):
        if image_ids is not None:
          _check_ids(image_ids, image_tokenizer.codebook_size, "image tokenizer", example["id"])
        if text_ids is not None:
          _check_ids(text_ids, text_tokenizer.vocab_size, "text tokenizer", example["id"])
          if len(text_ids) == 0:
            raise errors.DataError(
                f"text tokenizer returned no tokens for example {example['id']!r} "
                f"(caption {example['caption']!r})")
        yield {"image_tokens": image_ids, "text_tokens": text_ids, "image_png": png,
               "caption": example["caption"], "id": example["id"]}


def tokenize_split(source: Any, out_dir: str, split: str, text_tokenizer: Any,
                   image_tokenizer: Any, num_shards: Optional[int] = None, batch_size: int = 64,
                   *, kind: str = "paired", replace_metadata: bool = False,
                   progress: bool = False, pixels: bool = False,
                   max_bad_fraction: float = 0.0) -> dict[str, Any]:
  """Tokenizes every example of `source` into out_dir/{split}-*.tfrecord; updates metadata.json.

  kind "paired" stores image and text tokens, "image" only image tokens (text_tokenizer may
  be None), "text" only text tokens (image_tokenizer may be None; pixels are never read).
  `pixels` adds each image as PNG bytes (the source's size; image_tokenizer may then be
  None). num_shards None = one shard per RECORDS_PER_SHARD examples. Examples the source
  cannot give are skipped and counted up to `max_bad_fraction` (see Skipped; the split's
  "skipped" entry, absent when none was). Returns the split's metadata.
  """
  if kind not in records.KINDS:
    raise errors.DataError(f"kind must be one of {records.KINDS}, got {kind!r}")
  if kind != "text" and image_tokenizer is None and not pixels:
    raise errors.DataError(f"kind {kind!r} needs an image tokenizer (or --pixels)")
  if kind != "image" and text_tokenizer is None:
    raise errors.DataError(f"kind {kind!r} needs a text tokenizer")
  image_size = getattr(source, "image_size", None)
  pixel_info = None
  if pixels and kind != "text":
    if not image_size:
      raise errors.DataError(f"source {source!r} has no image size to store pixels at")
    pixel_info = {"image_size": int(image_size), "format": "png"}
  if (kind != "text" and image_tokenizer is not None and image_size is not None
      and image_size != image_tokenizer.image_size):
    raise errors.DataError(
        f"source {source!r} yields {image_size}px images but the image tokenizer "
        f"{image_tokenizer.path} expects {image_tokenizer.image_size}px")
  text_info = image_info = None
  if text_tokenizer is not None:
    text_info = records.text_tokenizer_info(text_tokenizer)
  if image_tokenizer is not None:
    image_info = records.image_tokenizer_info(image_tokenizer)
  records.compatible_splits(out_dir, split, text_info, image_info, replace_metadata,
                            pixel_info)
  num_shards = num_shards or max(1, math.ceil(len(source) / RECORDS_PER_SHARD))
  skipped = Skipped(max_bad_fraction, desc=f"split {split!r}")
  examples = _tokenized(source, kind, text_tokenizer, image_tokenizer, batch_size, progress,
                        desc=f"tokenize {split}", pixels=pixel_info is not None, skipped=skipped)
  info = records.write_split(out_dir, split, examples, num_shards, kind=kind)
  if skipped.count:
    info["skipped"] = skipped.reasons
  records.update_metadata(out_dir, split, info, text_info, image_info, replace=replace_metadata,
                          pixels=pixel_info)
  return info


def tokenize_folder(split_sources: Mapping[str, Any], out_dir: str, text_tokenizer: Any,
                    image_tokenizer: Any, num_shards: Optional[int] = None, batch_size: int = 64,
                    *, kind: str = "paired", progress: bool = False,
                    pixels: bool = False, max_bad_fraction: float = 0.0) -> dict[str, Any]:
  """tokenize_split for every {split: source}; a fresh metadata.json (an older one made with
  other tokenizers is replaced). Returns the final metadata."""
  for i, (split, source) in enumerate(split_sources.items()):
    tokenize_split(source, out_dir, split, text_tokenizer, image_tokenizer, num_shards,
                   batch_size, kind=kind, replace_metadata=(i == 0), progress=progress,
                   pixels=pixels, max_bad_fraction=max_bad_fraction)
  return records.read_metadata(out_dir)


def _parse_splits(arg: Optional[str]) -> Optional[list[tuple[str, str]]]:
  """'train,val=validation' -> [("train", "train"), ("val", "validation")]."""
  if not arg:
    return None
  pairs = []
  for item in arg.split(","):
    out, _, src = item.strip().partition("=")
    pairs.append((out, src or out))
  return pairs


def resolve_sources(source: str, splits: Optional[list[tuple[str, str]]],
                    image_size: Optional[int], val_fraction: float = 0.05, kind: str = "paired",
                    tfds_keys: tuple[str, str] = ("image", "caption"),
                    tfds_data_dir: Optional[str] = None) -> dict[str, Any]:
  """--source (+ --splits as [(output name, source name)]) -> {output split: source}.
  `tfds_keys` (image key, caption key) are also the keys of wds: (caption) and hf:."""
  def folder(path: str) -> Any:
    if kind == "text":
      return sources.CaptionsSource(path)
    return sources.ImageFolderSource(path, image_size)

  if source.startswith("tfds:"):
    name = source[len("tfds:"):]
    return {out: sources.TfdsSource(name, src, *tfds_keys, image_size or 0, tfds_data_dir)
            for out, src in (splits or [("train", "train")])}
  if source.startswith(("wds:", "hf:")):
    scheme, _, path = source.partition(":")
    if scheme == "hf" and web_sources.hf_splits(path) is not None:
      names = web_sources.hf_splits(path)
      chosen = splits or [(s, s) for s in names]
      missing = [src for _, src in chosen if src not in names]
      if missing:
        raise errors.NotFound(f"--source {source}: no split(s) {missing}; it has {names}")
      return {out: web_sources.HfSource(paths.join(path, src), image_size or 0, *tfds_keys)
              for out, src in chosen}
    if scheme == "hf":
      whole = web_sources.HfSource(path, image_size or 0, *tfds_keys)
    else:
      whole = web_sources.TarShardSource(path, image_size or 0, caption_key=tfds_keys[1])
    return _held_out(source, whole, splits, val_fraction)
  if not os.path.isdir(source):
    raise errors.NotFound(f"--source {source}: not a directory (or use tfds:NAME)")

  def has_captions(sub: str) -> bool:
    return os.path.exists(os.path.join(source, sub, sources.CAPTIONS_FILE))

  present = [s for s in SPLIT_NAMES if has_captions(s)]
  if present or (splits and all(has_captions(src) for _, src in splits)):
    chosen = splits or [(s, s) for s in present]
    missing = [src for _, src in chosen if not has_captions(src)]
    if missing:
      raise errors.NotFound(f"--source {source}: no {sources.CAPTIONS_FILE} for split(s) "
                              f"{missing} (expected {source}/<split>/{sources.CAPTIONS_FILE})")
    return {out: folder(os.path.join(source, src)) for out, src in chosen}
  if not os.path.exists(os.path.join(source, sources.CAPTIONS_FILE)):
    raise errors.NotFound(f"--source {source}: neither {sources.CAPTIONS_FILE} nor split "
                            f"sub-folders ({', '.join(SPLIT_NAMES)}) with one")
  return _held_out(source, folder(source), splits, val_fraction)


def _held_out(source: str, whole: Any, splits: Optional[list[tuple[str, str]]],
              val_fraction: float) -> dict[str, Any]:
  """{"train", "val"} of a source without splits: val is --val-fraction held out."""
  wanted = [out for out, _ in splits] if splits else ["train", "val"]
  if not set(wanted) <= {"train", "val"}:
    raise errors.ConfigError(
        f"--source {source} has no split sub-folders: only train and val (held "
        f"out by --val-fraction) can be made, not {wanted}")
  train_idx, val_idx = sources.holdout_split(len(whole), val_fraction)
  subsets = {"train": sources.SubsetSource(whole, train_idx),
             "val": sources.SubsetSource(whole, val_idx)}
  return {out: subsets[out] for out in wanted if len(subsets[out])}


def build_parser() -> argparse.ArgumentParser:
  p = errors.ArgumentParser(prog="upgen tokenize", description=__doc__.split("\n")[0])
  p.add_argument("--source", required=True,
                 help="DIR (captions.jsonl layout), tfds:NAME, wds:PATTERN or hf:PATH")
  p.add_argument("--out", required=True, help="output directory for shards + metadata.json")
  p.add_argument("--text-tokenizer", help="text tokenizer path (upgen.tokenizers.text.load)")
  p.add_argument("--image-tokenizer", help="image tokenizer workdir (upgen.tokenizers.image.load)")
  p.add_argument("--splits", help="comma separated; OUT=SRC renames (default: all present)")
  p.add_argument("--num-shards", type=errors.whole(1), default=None, help="shards per split (default: auto)")
  p.add_argument("--val-fraction", type=errors.number(0, above=False, below=1), default=0.05,
                 help="held out as val when DIR has no split sub-folders")
  p.add_argument("--kind", default="paired", choices=records.KINDS, help="what records hold")
  p.add_argument("--batch-size", type=errors.whole(1), default=64, help="examples per tokenizer call")
  p.add_argument("--image-key", "--tfds-image-key", dest="image_key", default="image",
                 help="tfds: and hf: sources: the image column")
  p.add_argument("--caption-key", "--tfds-caption-key", dest="caption_key", default="caption",
                 help="tfds: and hf: the caption column; wds: the caption's key in KEY.json")
  p.add_argument("--tfds-data-dir", default=None)
  p.add_argument("--pixels", action="store_true",
                 help="also store each image as PNG bytes (families that work in pixels)")
  p.add_argument("--image-size", type=errors.whole(1), default=None,
                 help="with --pixels and no --image-tokenizer: pixels per side")
  p.add_argument("--max-bad-fraction", type=errors.number(0, above=False, below=1), default=None,
                 help="skip and count bad examples up to this fraction (default: 0 for DIR "
                      f"and tfds:, {WEB_MAX_BAD_FRACTION} for wds: and hf:)")
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point of `upgen tokenize` (argv excludes the program and sub-command names)."""
  args = build_parser().parse_args(argv)
  text_tokenizer = image_tokenizer = None
  if args.kind != "image":
    if not args.text_tokenizer:
      raise errors.UsageError(f"--text-tokenizer is required for --kind {args.kind}")
    text_tokenizer = text.load(args.text_tokenizer)
  if args.kind != "text" and (args.image_tokenizer or not args.pixels):
    if not args.image_tokenizer:
      raise errors.UsageError(f"--image-tokenizer (or --pixels) is required for "
                              f"--kind {args.kind}")
    image_tokenizer = image.load(args.image_tokenizer)
  image_size = image_tokenizer.image_size if image_tokenizer is not None else args.image_size
  if args.kind != "text" and args.pixels and not image_size:
    raise errors.UsageError("--pixels without --image-tokenizer needs --image-size")
  if image_tokenizer is not None and args.image_size and args.image_size != image_size:
    raise errors.UsageError(f"--image-size {args.image_size} differs from the image "
                            f"tokenizer's {image_size}")
  split_sources = resolve_sources(args.source, _parse_splits(args.splits), image_size,
                                  args.val_fraction, args.kind,
                                  (args.image_key, args.caption_key), args.tfds_data_dir)
  max_bad_fraction = args.max_bad_fraction
  if max_bad_fraction is None:
    max_bad_fraction = WEB_MAX_BAD_FRACTION if args.source.startswith(("wds:", "hf:")) else 0.0
  meta = tokenize_folder(split_sources, args.out, text_tokenizer, image_tokenizer,
                         args.num_shards, args.batch_size, kind=args.kind,
                         progress=True, pixels=args.pixels, max_bad_fraction=max_bad_fraction)
  for split in split_sources:
    info = meta["splits"][split]
    print(f"{split}: {sum(info['records_per_shard'])} {info['kind']} records in "
          f"{len(info['shards'])} shard(s), max text length {info['max_text_len']}")
    for reason, entry in sorted(info.get("skipped", {}).items()):
      print(f"  skipped {entry['count']} {reason}: {', '.join(entry['first'])}"
            + (", ..." if entry["count"] > len(entry["first"]) else ""))
  print(f"wrote {os.path.join(args.out, records.METADATA_FILE)}")
  return 0
