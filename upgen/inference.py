"""The inference API: a trained run loaded from its run directory, and what it can draw.

  run = inference.load_run("runs/quickstart/model")      # params (EMA) + its tokenizers
  images = inference.generate_images(run, ["a red circle"], per_prompt=4)
  texts = inference.caption_images(run, images)          # families that caption
  scorer = inference.Scorer("runs/clip")                  # a CLIP run (or import) as a scorer
  best, scores = inference.rerank(scorer, prompts, per_prompt, candidates, images)

Every sampler takes a fixed batch and is compiled once (`batching.run_batched`); a family
that lacks a sampler says so by name. The tokenizers are the ones recorded in the run's data
metadata.json, so a run samples with exactly what it was trained on. `upgen sample`
(tools/sample.py), the demo, the quickstart and the evaluators all draw through here.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from typing import Any, Sequence

from absl import flags
from flax import linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
from PIL import Image

from upgen import errors
from upgen import families
from upgen import rundir
from upgen.data import records
from upgen.data import sources
from upgen.data.spec import DataSpec
from upgen.runtime import batching
from upgen.runtime import init_from
from upgen.runtime import restore
from upgen.tokenizers import image as image_tok_lib
from upgen.tokenizers import text as text_tok_lib

log = logging.getLogger("upgen.inference")


@dataclasses.dataclass
class Run:
  config: ml_collections.ConfigDict
  setup: families.Setup
  params: Any
  text_tokenizer: Any
  image_tokenizer: Any

  @property
  def family(self) -> families.Family:
    return self.setup.family


def load_run(workdir: str, ema: bool = True) -> Run:
  """A trained run, its parameters (the EMA where the run keeps one and `ema`) and its data's
  tokenizers. Records without an image tokenizer (pixel records for a family that samples
  pixels) give image_tokenizer None."""
  config, setup, params = restore.restore_params(workdir, ema=ema)
  metadata = records.read_metadata(config.data.dir)
  text_tok = text_tok_lib.load_recorded(config.data.dir, metadata)
  image_tok = None
  if metadata.get("image_tokenizer"):
    image_tok = image_tok_lib.load_recorded(config.data.dir, metadata)
  return Run(config, setup, params, text_tok, image_tok)


def with_sample_settings(run: Run, overrides: Sequence[str]) -> Run:
  """The run with `--config.sample.KEY=VALUE` overrides applied to its sampling settings,
  parsed as `upgen train` parses its overrides (ml_collections' config flags: each value
  read as the type the run's config.sample gives the key)."""
  if not overrides:
    return run
  sample = ml_collections.ConfigDict(run.config.to_dict()).get("sample")
  for arg in overrides:
    key = arg[len("--config.sample."):].partition("=")[0]
    if sample is None or key not in sample:
      raise errors.ConfigError(f"{arg}: config.sample has no key {key!r} in this run (its "
                               f"keys: {', '.join(sorted(sample or {}))})")
  fv = flags.FlagValues()
  argv = ["upgen sample", *overrides]
  config_flags.DEFINE_config_dict("config", ml_collections.ConfigDict({"sample": sample}),
                                  flag_values=fv, lock_config=True, sys_argv=argv)
  try:
    fv(argv)
  except flags.Error as e:
    raise errors.ConfigError(str(e)) from None
  config = ml_collections.ConfigDict(run.config.to_dict())
  config.sample = fv.config.sample
  settings = run.family.sample_config(config.sample)
  return dataclasses.replace(run, config=config,
                             setup=dataclasses.replace(run.setup, sample=settings))



def to_pixels(run: Run, out: np.ndarray) -> np.ndarray:
  """A sampler's output (token ids, or pixels already) -> uint8 images."""
  out = np.asarray(out)
  if out.dtype == np.uint8 and out.ndim == 4:
    return out
  if run.image_tokenizer is None:
    raise errors.DataError(f"config.data.dir={run.config.data.dir}: the records have no image "
                           "tokenizer to decode this family's image tokens")
  return run.image_tokenizer.decode(out.reshape((-1,) + tuple(run.image_tokenizer.grid)))


def prompt_notes(run: Run, prompt: str) -> tuple[str, list[str]]:
  """(the text the model reads for `prompt`: cut to its text length, as the tokenizer decodes
  it; notes on what it cut and on words the training captions did not have (the text
  tokenizer's caption_words.txt) or characters it does not know)."""
  tok, length = run.text_tokenizer, run.setup.spec.text_seq_len
  ids = tok.encode(prompt)
  seen, notes = tok.decode(ids[:length]), []
  if len(ids) > length:
    notes.append(f"truncated to the model's {length} tokens (it is {len(ids)}): the model "
                 f"reads {seen!r}")
  unknown = list(dict.fromkeys(tok.unknown_words(prompt)))  # Each once, in order.
  if unknown:
    more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
    notes.append(f"{', '.join(repr(w) for w in unknown[:8])}{more} not in the training "
                 f"captions (the model never learned {'it' if len(unknown) == 1 else 'them'})")
  return seen, notes


def read_as(run: Run, prompts: Sequence[str]) -> list[str]:
  """The text the model reads for each prompt (`prompt_notes`), with a warning per note."""
  seen = []
  for i, prompt in enumerate(prompts, start=1):
    text, notes = prompt_notes(run, prompt)
    seen.append(text)
    for note in notes:
      log.warning("prompt %d %s: %s", i, quoted(prompt), note)
  return seen


def quoted(text: str, keep: int = 40) -> str:
  """repr(text), or for a long one its head and tail with the length between (a warning about
  a 10,000-character prompt should not echo all of it)."""
  if len(text) <= 2 * keep + 20:
    return repr(text)
  return f"{text[:keep]!r} ... {text[-keep:]!r} ({len(text):,} characters)"


def caption_ids(run: Run, prompts: Sequence[str], per_prompt: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """(ids, mask) [len(prompts) * per_prompt, Lt], prompt-major, cut to the model's text length."""
  captions = [p for p in prompts for _ in range(per_prompt)]
  return run.text_tokenizer.pad_batch(run.text_tokenizer.encode_batch(captions),
                                      run.setup.spec.text_seq_len)


def generate_images(run: Run, prompts: list[str], per_prompt: int, *, seed: int = 0,
                    batch_size: int = 64) -> np.ndarray:
  """uint8 images [len(prompts) * per_prompt, H, W, 3], prompt-major order."""
  sample = jax.jit(run.setup.bind("sample_images"))
  ids, mask = caption_ids(run, prompts, per_prompt)
  return to_pixels(run, batching.run_batched(
      sample, run.params, [ids, mask], batch_size, seed))


def unconditional_images(run: Run, num: int, *, seed: int = 0, batch_size: int = 64
                         ) -> np.ndarray:
  """uint8 images [num, H, W, 3] drawn without a caption."""
  sample = jax.jit(run.setup.bind("unconditional_images"), static_argnames="num")
  rng = jax.random.key(seed)
  out = [np.asarray(sample(run.params, jax.random.fold_in(rng, i),
                           num=min(batch_size, num - start)))
         for i, start in enumerate(range(0, num, batch_size))]
  return to_pixels(run, np.concatenate(out))


def region_known(region: Sequence[int], image_size: int, grid: Sequence[int]) -> np.ndarray:
  """bool Li (raster order): False on every token cell the pixel box X0,Y0,X1,Y1 (X1, Y1
  exclusive) touches, True elsewhere."""
  x0, y0, x1, y1 = (int(v) for v in region)
  if not (0 <= x0 < x1 <= image_size and 0 <= y0 < y1 <= image_size):
    raise errors.ConfigError(
        f"--region {x0},{y0},{x1},{y1}: need 0 <= X0 < X1 <= {image_size} and 0 <= Y0 < Y1 <= "
        f"{image_size} (pixels of the {image_size}x{image_size} image the tokenizer sees; X1 "
        "and Y1 exclusive)")
  rows, cols = grid
  cell_h, cell_w = image_size / rows, image_size / cols
  r0, r1 = int(y0 // cell_h), int(np.ceil(y1 / cell_h))
  c0, c1 = int(x0 // cell_w), int(np.ceil(x1 / cell_w))
  known = np.ones((rows, cols), bool)
  known[r0:r1, c0:c1] = False
  return known.reshape(-1)


def inpaint_tokens(run: Run, image_HxWx3: np.ndarray, region: Sequence[int]
                   ) -> tuple[np.ndarray, np.ndarray]:
  """(the image's tokens Li, known Li: False on the token cells `region` touches); the image
  is uint8 at the tokenizer's size."""
  tok = run.image_tokenizer
  return (tok.encode(image_HxWx3[None]).reshape(-1),
          region_known(region, tok.image_size, tok.grid))


def inpaint_images(run: Run, prompts: list[str], per_prompt: int, image_path: str,
                   region: Sequence[int], *, seed: int = 0, batch_size: int = 64) -> np.ndarray:
  """uint8 images [len(prompts) * per_prompt, H, W, 3]: IMAGE with `region` regenerated."""
  fn = jax.jit(run.setup.bind("inpaint"))
  tokens_Li, known_Li = inpaint_tokens(
      run, sources.load_image(image_path, run.image_tokenizer.image_size), region)
  ids, mask = caption_ids(run, prompts, per_prompt)
  n = len(ids)
  tokens = np.broadcast_to(tokens_Li, (n, tokens_Li.size)).copy()
  known = np.broadcast_to(known_Li, (n, known_Li.size)).copy()
  return to_pixels(run, batching.run_batched(fn, run.params, [tokens, known, ids, mask],
                                             batch_size,
                                   seed))


def caption_images(run: Run, images: np.ndarray, *, seed: int = 0, batch_size: int = 64
                   ) -> list[str]:
  caption = jax.jit(run.setup.bind("caption_images"))
  tokens = run.image_tokenizer.encode(images).reshape(len(images), -1)
  ids = batching.run_batched(caption, run.params, [tokens], batch_size, seed)
  return [run.text_tokenizer.decode([int(t) for t in row]) for row in ids]


def rerank(scorer: Any, prompts: list[str], per_prompt: int, candidates: int,
           images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Best of each `candidates` consecutive images by the scorer's CLIP score with their
  prompt: images [P * K * N] prompt-major -> (images [P * K], scores [P * K])."""
  p, k, n = len(prompts), per_prompt, candidates
  scores = clip_score(scorer.cosine(
      images, [q for q in prompts for _ in range(k * n)])).reshape(p * k, n)
  best = np.argmax(scores, axis=1)
  rows = np.arange(p * k) * n + best
  return images[rows], scores[np.arange(p * k), best]


def load_import(init_dir: str, spec_for) -> tuple[Any, Any, Any]:
  """An `upgen import hf` directory used as it is, without training: (setup, params, text
  tokenizer), the model built by its family for the sizes records would give (e.g. plain
  text of the model's context for a language
  model; `spec_for(model, tokenizer, import.json)`) and filled with INIT's parameters."""
  with open(os.path.join(init_dir, rundir.REPORT_FILE)) as f:
    report = json.load(f)
  family = families.get_family(report["family"])
  with open(os.path.join(init_dir, rundir.CONFIG_FILE)) as f:
    config = ml_collections.ConfigDict(json.load(f))
  tok_dir = os.path.join(init_dir, rundir.TOKENIZER_DIR)
  if not os.path.isdir(tok_dir):
    raise errors.NotFound(f"{tok_dir}: not found; the imported directory had no tokenizer")
  tok = text_tok_lib.load(tok_dir)
  setup = families.build(config, spec_for(config.model, tok, report), family)
  fresh = nn.unbox(jax.jit(setup.family.init_variables, static_argnums=0)(
      setup.model, jax.random.key(0), setup.dummy_batch(1))["params"])
  return setup, init_from.apply(fresh, init_dir), tok



class Scorer:
  """(image, caption) -> cosine similarity under a trained CLIP run."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    if init_from.is_import(workdir):  # A pretrained CLIP as imported, with its tokenizer.
      self.config = None
      self.setup, self.params, self.tokenizer = load_import(workdir, _import_spec)
    else:
      self.config, self.setup, self.params = restore.restore_params(workdir)
      self.tokenizer = text_tok_lib.load_recorded(self.config.data.dir)
    self._build()

  @classmethod
  def of(cls, setup: families.Setup, params: Any, config: Any) -> "Scorer":
    """The scorer of a clip run being trained (its records' tokenizer; `params` may be
    replaced between calls)."""
    scorer = cls.__new__(cls)
    scorer.workdir, scorer.config, scorer.setup, scorer.params = "", config, setup, params
    scorer.tokenizer = text_tok_lib.load_recorded(config.data.dir)
    scorer._build()
    return scorer

  def _build(self) -> None:
    if self.setup.family.name != "clip":
      raise errors.ConfigError(f"--scorer {self.workdir}: a model of family "
                               f"{self.setup.family.name!r}; a scorer is a clip run "
                               "(configs/clip.py) or a CLIP import")
    self.image_size = self.setup.spec.image_size
    model = self.setup.model  # Scores are computed in float32 whatever the run trained in.
    model = type(model)(dataclasses.replace(model.config, dtype=jnp.float32))
    self._image = jax.jit(lambda p, x: model.apply({"params": p}, x,
                                                   method=type(model).encode_image))
    self._text = jax.jit(lambda p, t, m: model.apply({"params": p}, t, m,
                                                     method=type(model).encode_text))

  def _batched(self, fn, arrays: Sequence[np.ndarray], batch_size: int, fixed: bool = False
               ) -> np.ndarray:
    """fn over batches of `batch_size` (`batching.run_batched`; fn takes no rng)."""
    return batching.run_batched(fn, self.params, arrays, batch_size, fixed=fixed)

  def image_features(self, images: np.ndarray, batch_size: int = 64, fixed: bool = False
                     ) -> np.ndarray:
    """uint8 N x S x S x 3 (resized first if another size) -> unit vectors N x D; `fixed`:
    every batch padded to batch_size rows (one program for any N)."""
    images = np.asarray(images, np.uint8)
    if images.shape[1:3] != (self.image_size, self.image_size):
      images = np.stack([sources.resize_and_crop(Image.fromarray(x), self.image_size)
                         for x in images])
    return _unit(self._batched(self._image, [images], batch_size, fixed))

  def text_features(self, captions: Sequence[str], batch_size: int = 64, fixed: bool = False
                    ) -> np.ndarray:
    ids, mask = self.tokenizer.pad_batch(self.tokenizer.encode_batch(list(captions)),
                                         self.setup.spec.text_seq_len)
    return _unit(self._batched(self._text, [ids, mask], batch_size, fixed))

  def cosine(self, images: np.ndarray, captions: Sequence[str], batch_size: int = 64,
             fixed: bool = False) -> np.ndarray:
    """Cosine of each image with its caption, N."""
    return np.sum(self.image_features(images, batch_size, fixed) *
                  self.text_features(captions, batch_size, fixed), axis=1)

  def _pairs(self, num: int, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, text ids, text masks) of the first `num` pairs of the scorer's `split`."""
    if self.config is None:
      raise errors.ConfigError(f"--scorer {self.workdir} is an import, with no records of "
                               "its own to measure retrieval on (--retrieval 0)")
    config = self.config.copy_and_resolve_references()
    config.data.batch_size = 1
    images, texts, masks = [], [], []
    for batch in self.setup.family.reads.eval_iterator(config, self.setup.spec, split, None):
      if batch["has_image"][0] and batch["has_text"][0]:
        images.append(batch["pixels"][0])
        texts.append(batch["text_tokens"][0])
        masks.append(batch["text_mask"][0])
      if len(images) >= num:
        break
    if not images:
      raise errors.DataError(f"{self.config.data.dir}: no pairs in split {split!r}")
    return np.stack(images), np.stack(texts), np.stack(masks)

  def validation_pairs(self, num: int = 256, split: str = "val"
                       ) -> tuple[np.ndarray, list[str]]:
    """(uint8 images, captions as the tokenizer decodes them) of the first `num` pairs of
    the scorer's `split`."""
    images, ids, masks = self._pairs(num, split)
    return images, [self.tokenizer.decode(i[m.astype(bool)]) for i, m in zip(ids, masks)]

  def retrieval(self, num: int = 256, split: str = "val") -> dict[str, float]:
    """In-batch top-1 retrieval over the first `num` pairs of the scorer's `split`."""
    images, texts, masks = self._pairs(num, split)
    image_f = _unit(self._batched(self._image, [images], 64))
    text_f = _unit(self._batched(self._text, [texts, masks], 64))
    sim = image_f @ text_f.T
    labels = np.arange(len(sim))
    return {"pairs": len(sim),
            "image_to_text_top1": float(np.mean(np.argmax(sim, 1) == labels)),
            "text_to_image_top1": float(np.mean(np.argmax(sim, 0) == labels))}



def _import_spec(model: Any, tok: Any, report: dict):
  """An imported CLIP's sizes: captions of its context less [BOS] and [EOS], images of the
  size it was trained at (import.json "data")."""
  framed = (tok.bos_id is not None) + (tok.eos_id is not None)
  return DataSpec(text_vocab_size=tok.vocab_size, text_pad_id=tok.pad_id,
                  text_bos_id=-1 if tok.bos_id is None else tok.bos_id,
                  text_eos_id=-1 if tok.eos_id is None else tok.eos_id,
                  text_seq_len=int(model.max_positions) - framed,
                  image_size=int(report["data"]["image_size"]))



def _unit(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)



def clip_score(cosine: np.ndarray) -> np.ndarray:
  return 100.0 * np.maximum(cosine, 0.0)



@functools.lru_cache(maxsize=4)
def load_scorer(workdir: str) -> Scorer:
  """A scorer, loaded once per process for each run directory."""
  return Scorer(workdir)

