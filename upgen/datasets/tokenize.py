"""`upgen tokenize`: raw images + captions -> pre-tokenized record shards + metadata.json.

  upgen tokenize --source DIR|tfds:NAME|wds:PATTERN|hf:PATH --out OUT \
      --text-tokenizer PATH --image-tokenizer WORKDIR [--splits train,val,test] \
      [--num-shards N] [--val-fraction 0.05] [--kind paired|image|text] [--batch-size 64] \
      [--pixels [--image-size S]] [--image-key image] [--caption-key caption] \
      [--max-bad-fraction F] [--min-image-side PX] [--min-caption-length N]
      [--max-caption-length N] [--dedup] [--coordinator_address HOST:PORT
      --num_processes N --process_id I]

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
no pair, a caption with no text tokens) are skipped and counted per reason in the split's
metadata ("skipped") and the summary while they are at most --max-bad-fraction of the
examples seen; above it the job stops with one line. The default is 0 for folders and TFDS
(the first bad example stops the job, naming it: such data was curated by hand) and
WEB_MAX_BAD_FRACTION for wds: and hf:. The filters (--min-image-side, --min/max-caption-
length in characters, --dedup for exact duplicates) drop examples on purpose, counted apart
("filtered"); see upgen/datasets/tokenize_examples.py.

The job is resumable and runs on many processes (upgen/datasets/tokenize_job.py): the same
command started again after a kill skips the shards already written; started as N processes
with `upgen train`'s flags (or under a cluster jax detects: TPU slices, SLURM), each writes
its share of the shards, encoding on its local devices, and process 0 writes metadata.json.

Tokenizer protocol (upgen/tokenizers/text.py, upgen/tokenizers/image.py):
  text:  .encode_batch(list[str]) -> list[list[int]], .vocab_size, .pad_id, .mask_id,
         .bos_id, .eos_id, .identity() -> dict, .path
  image: .encode(uint8 BxHxWx3) -> int32 Bxhxw, .codebook_size, .grid, .image_size,
         .identity() -> dict, .path
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Mapping, Optional, Sequence

import jax

from upgen import errors
from upgen import paths
from upgen.data import records
from upgen.data import sources
from upgen.data import web_sources
from upgen.datasets import tokenize_examples as examples_lib
from upgen.datasets import tokenize_job as job_lib
from upgen.runtime import distributed
from upgen.tokenizers import image
from upgen.tokenizers import text

SPLIT_NAMES = ("train", "val", "test")
WEB_MAX_BAD_FRACTION = 0.01  # --max-bad-fraction's default for wds: and hf: sources.


def _job(split_sources: Mapping[str, Any], out_dir: str, text_tokenizer: Any,
         image_tokenizer: Any, num_shards: Optional[int], batch_size: int, *, kind: str,
         replace_metadata: bool, progress: bool, pixels: bool, max_bad_fraction: float,
         filters: examples_lib.Filters) -> job_lib.Job:
  """The job, once its settings are checked against each other and the sources."""
  if kind not in records.KINDS:
    raise errors.DataError(f"kind must be one of {records.KINDS}, got {kind!r}")
  if kind != "text" and image_tokenizer is None and not pixels:
    raise errors.DataError(f"kind {kind!r} needs an image tokenizer (or --pixels)")
  if kind != "image" and text_tokenizer is None:
    raise errors.DataError(f"kind {kind!r} needs a text tokenizer")
  if kind == "text" and filters.min_side:
    raise errors.UsageError("--min-image-side needs images; --kind text reads none")
  for source in split_sources.values():
    image_size = getattr(source, "image_size", None)
    if pixels and kind != "text" and not image_size:
      raise errors.DataError(f"source {source!r} has no image size to store pixels at")
    if (kind != "text" and image_tokenizer is not None and image_size is not None
        and image_size != image_tokenizer.image_size):
      raise errors.DataError(
          f"source {source!r} yields {image_size}px images but the image tokenizer "
          f"{image_tokenizer.path} expects {image_tokenizer.image_size}px")
  encoders = examples_lib.Encoders(kind, text_tokenizer, image_tokenizer, pixels, batch_size,
                                   filters)
  return job_lib.Job(out_dir, split_sources, encoders, num_shards, max_bad_fraction,
                     replace_metadata, progress)


def tokenize_folder(split_sources: Mapping[str, Any], out_dir: str, text_tokenizer: Any,
                    image_tokenizer: Any, num_shards: Optional[int] = None, batch_size: int = 64,
                    *, kind: str = "paired", progress: bool = False, pixels: bool = False,
                    max_bad_fraction: float = 0.0,
                    filters: examples_lib.Filters = examples_lib.Filters(),
                    replace_metadata: bool = True) -> dict[str, Any]:
  """Tokenizes every {split: source} into out_dir/{split}-*.tfrecord and writes
  metadata.json (with `replace_metadata`, one made with other tokenizers is replaced; else
  that is a MetadataError). Returns the metadata (on process 0; None on the others).

  kind "paired" stores image and text tokens, "image" only image tokens (text_tokenizer may
  be None), "text" only text tokens (image_tokenizer may be None; pixels are never read).
  `pixels` adds each image as PNG bytes (the source's size; image_tokenizer may then be
  None). num_shards None = one shard per job_lib.RECORDS_PER_SHARD examples. Examples the
  source cannot give are skipped and counted up to `max_bad_fraction`; `filters` drop
  examples on purpose (tokenize_examples.py); both counted in the split's metadata
  ("skipped", "filtered": absent when none was).
  """
  job = _job(split_sources, out_dir, text_tokenizer, image_tokenizer, num_shards, batch_size,
             kind=kind, replace_metadata=replace_metadata, progress=progress, pixels=pixels,
             max_bad_fraction=max_bad_fraction, filters=filters)
  return job_lib.run_job(job)


def tokenize_split(source: Any, out_dir: str, split: str, text_tokenizer: Any,
                   image_tokenizer: Any, num_shards: Optional[int] = None, batch_size: int = 64,
                   *, kind: str = "paired", replace_metadata: bool = False,
                   progress: bool = False, pixels: bool = False,
                   max_bad_fraction: float = 0.0,
                   filters: examples_lib.Filters = examples_lib.Filters()) -> dict[str, Any]:
  """tokenize_folder for one split, added to out_dir's metadata.json beside the splits it
  has (made with the same tokenizers, else a MetadataError unless `replace_metadata`).
  Returns the split's metadata."""
  meta = tokenize_folder({split: source}, out_dir, text_tokenizer, image_tokenizer,
                         num_shards, batch_size, kind=kind, progress=progress, pixels=pixels,
                         max_bad_fraction=max_bad_fraction, filters=filters,
                         replace_metadata=replace_metadata)
  return meta["splits"][split] if meta is not None else None


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
    if scheme == "wds":  # In parts: each process opens the tar shards it writes only.
      return _held_out_parts(source, web_sources.TarShardParts(
          path, image_size or 0, caption_key=tfds_keys[1]), splits, val_fraction)
    return _held_out(source, web_sources.HfSource(path, image_size or 0, *tfds_keys), splits,
                     val_fraction)
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


def _train_val(source: str, splits: Optional[list[tuple[str, str]]]) -> list[str]:
  """The splits --splits asks of a source without its own: train and val at most."""
  wanted = [out for out, _ in splits] if splits else ["train", "val"]
  if not set(wanted) <= {"train", "val"}:
    raise errors.ConfigError(
        f"--source {source} has no split sub-folders: only train and val (held "
        f"out by --val-fraction) can be made, not {wanted}")
  return wanted


def _held_out_parts(source: str, parts: Any, splits: Optional[list[tuple[str, str]]],
                    val_fraction: float) -> dict[str, Any]:
  """{"train", "val"} of a source in parts: val held out by example id (HeldOutParts)."""
  wanted = _train_val(source, splits)
  return {out: sources.HeldOutParts(parts, val_fraction, out) for out in wanted
          if out == "train" or val_fraction > 0}


def _held_out(source: str, whole: Any, splits: Optional[list[tuple[str, str]]],
              val_fraction: float) -> dict[str, Any]:
  """{"train", "val"} of a source without splits: val is --val-fraction held out."""
  wanted = _train_val(source, splits)
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
  p.add_argument("--read-threads", type=errors.whole(1), default=0,
                 help="threads reading, decoding and resizing images (default: min(16, cores))")
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
  f = p.add_argument_group("filters (dropped examples are counted in metadata.json)")
  f.add_argument("--min-image-side", type=errors.whole(0), default=0,
                 help="drop images whose shorter side (before resizing) is below this")
  f.add_argument("--min-caption-length", type=errors.whole(0), default=0,
                 help="drop captions shorter than this many characters")
  f.add_argument("--max-caption-length", type=errors.whole(0), default=0,
                 help="drop captions longer than this many characters (0: no bound)")
  f.add_argument("--dedup", action="store_true",
                 help="drop exact duplicates (same caption and pixels) after the first")
  distributed.add_arguments(p)
  return p


def _print_summary(meta: Mapping[str, Any], splits: Sequence[str], job_summary: Mapping[str, Any],
                   out: str) -> None:
  for split in splits:
    info = meta["splits"][split]
    print(f"{split}: {sum(info['records_per_shard'])} {info['kind']} records in "
          f"{len(info['shards'])} shard(s), max text length {info['max_text_len']}")
    for what in ("skipped", "filtered"):
      for reason, entry in sorted(info.get(what, {}).items()):
        print(f"  {what} {entry['count']} {reason}: {', '.join(entry['first'])}"
              + (", ..." if entry["count"] > len(entry["first"]) else ""))
  print(f"wrote {paths.join(out, records.METADATA_FILE)}")


def _throughput(summary: Mapping[str, Any]) -> str:
  """'process P: N examples in T s (R/s; read a s, image_tokens b s, ...)', for docs/data.md."""
  seconds, n = summary["seconds"], summary["examples"]
  stages = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(summary["stages"].items()))
  resumed = (f"; {summary['resumed']} of {summary['shards']} shard(s) already written"
             if summary["resumed"] else "")
  return (f"process {jax.process_index()}: {n} examples in {seconds:.1f} s "
          f"({n / max(seconds, 1e-9):.1f}/s; {stages}){resumed}")


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point of `upgen tokenize` (argv excludes the program and sub-command names)."""
  args = build_parser().parse_args(argv)
  distributed.initialize(**distributed.argument_values(args))  # Before any jax backend.
  text_tokenizer = image_tokenizer = None
  if args.kind != "image":
    if not args.text_tokenizer:
      raise errors.UsageError(f"--text-tokenizer is required for --kind {args.kind}")
    text_tokenizer = text.load(args.text_tokenizer)
  if args.kind != "text" and (args.image_tokenizer or not args.pixels):
    if not args.image_tokenizer:
      raise errors.UsageError(f"--image-tokenizer (or --pixels) is required for "
                              f"--kind {args.kind}")
    image_tokenizer = image.load(args.image_tokenizer, args.batch_size,
                                 devices=jax.local_devices())
  image_size = image_tokenizer.image_size if image_tokenizer is not None else args.image_size
  if args.kind != "text" and args.pixels and not image_size:
    raise errors.UsageError("--pixels without --image-tokenizer needs --image-size")
  if image_tokenizer is not None and args.image_size and args.image_size != image_size:
    raise errors.UsageError(f"--image-size {args.image_size} differs from the image "
                            f"tokenizer's {image_size}")
  if args.max_caption_length and args.max_caption_length < args.min_caption_length:
    raise errors.UsageError(f"--max-caption-length {args.max_caption_length} is below "
                            f"--min-caption-length {args.min_caption_length}")
  split_sources = resolve_sources(args.source, _parse_splits(args.splits), image_size,
                                  args.val_fraction, args.kind,
                                  (args.image_key, args.caption_key), args.tfds_data_dir)
  max_bad_fraction = args.max_bad_fraction
  if max_bad_fraction is None:
    max_bad_fraction = WEB_MAX_BAD_FRACTION if args.source.startswith(("wds:", "hf:")) else 0.0
  filters = examples_lib.Filters(args.min_image_side, args.min_caption_length,
                                 args.max_caption_length, args.dedup)
  job = _job(split_sources, args.out, text_tokenizer, image_tokenizer, args.num_shards,
             args.batch_size, kind=args.kind, replace_metadata=True, progress=True,
             pixels=args.pixels, max_bad_fraction=max_bad_fraction, filters=filters)
  job.read_threads = args.read_threads
  meta = job_lib.run_job(job)
  print(_throughput(job.summary))
  if meta is not None:
    _print_summary(meta, list(split_sources), job.summary, args.out)
  return 0
