"""`upgen demo`: a local web page for any trained run, of any family.

  upgen demo --workdir RUN [--port 7860] [--host 127.0.0.1] [--scorer CLIP_RUN] [--no-ema]
             [--batch-size 8] [--max-samples 16]

A prompt box, the number of samples, the family's own sampling settings (the keys of the
run's config.sample, with the run's values as defaults), a generate button and the images in
a grid with the time they took; best-of-N reranking by CLIP score when a scorer run is given;
image->text (drop an image, get captions) and inpainting (regenerate a box of an image from a
prompt) for families that can. The page is Gradio's (`pip install -e .[demo]`, pinned in
requirements-demo-lock.txt); nothing leaves the machine: analytics off, server-side rendering
off, the page's fonts and scripts served by the local server.

The model is loaded and its samplers compiled once at start-up for the run's settings; every
request draws in batches of --batch-size rows (the last padded), so any number of samples
reuses those programs. A changed setting that the sampler is specialised on (steps,
schedule, ...) compiles once on first use and is kept. Requests queue: one draws at a time.

This module is the page's logic (`Demo`, testable without a browser) and the command;
`upgen/tools/demo_page.py` lays the page out.
"""
from __future__ import annotations

import dataclasses
import functools
import threading
import time
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
from PIL import Image

from upgen import errors
from upgen import inference
from upgen.data import sources
from upgen.models import glide
from upgen.runtime import batching
from upgen.sampling import mask_schedule
from upgen.sampling import maskgit

# config.sample keys that are not sampler settings on the page: the number of samples is a
# control of its own, and text_steps belongs to image->text.
NOT_SETTINGS = ("per_prompt", "text_steps")


def _choices() -> dict[str, tuple[str, ...]]:
  return {"schedule": mask_schedule.SCHEDULES,
          "temperature_schedule": maskgit.TEMPERATURE_SCHEDULES, "sampler": glide.SAMPLERS}


# What each sampler setting does, shown beside it on the page.
HELP = {
    "num_steps": "decoding / denoising steps",
    "temperature": "softmax temperature of token sampling (0 = argmax)",
    "choice_temperature": "noise on MaskGIT's confidences, annealed to 0",
    "schedule": "MaskGIT mask schedule",
    "temperature_schedule": "constant, or linear (sharper late)",
    "guidance_scale": "classifier-free guidance: (1 + g) cond - g uncond; 0 = off",
    "top_k": "sample among the k most likely codes (0 = all)",
    "top_p": "nucleus mass (1 = all)",
    "beam_size": "> 0: beam search with this many beams",
    "sampler": "ddim or ddpm (ancestral)",
    "eta": "DDIM noise (0 = deterministic)",
    "clip_denoised": "clip each step's predicted x0 to [-1, 1]",
}


@dataclasses.dataclass(frozen=True)
class Field:
  """One sampler setting on the page: config.sample.<key>, the run's value as default."""
  key: str
  default: Any
  choices: Optional[tuple[str, ...]] = None
  help: str = ""

  def parse(self, value: Any) -> Any:
    """A form value as the type of the run's setting; an error names the config key."""
    where = f"config.sample.{self.key}"
    if value is None or (isinstance(value, str) and not value.strip()):
      raise errors.ConfigError(f"{where}: empty (the run's value is {self.default!r})")
    if isinstance(self.default, bool):
      return bool(value)
    try:
      if isinstance(self.default, int):
        number = float(value)
        if number != int(number):
          raise ValueError
        return int(number)
      if isinstance(self.default, float):
        return float(value)
    except (TypeError, ValueError):
      kind = "an integer" if isinstance(self.default, int) else "a number"
      raise errors.ConfigError(f"{where}={value!r}: must be {kind}") from None
    return str(value)


def fields_of(sample_group: Mapping[str, Any], settings: Any = None) -> list[Field]:
  """The page's sampler settings for a run's config.sample: every key but NOT_SETTINGS, in
  the order of the family's settings record (`settings`, a dataclass) where given."""
  choices = _choices()
  order = [f.name for f in dataclasses.fields(settings)] if settings is not None else []
  keys = sorted((k for k in sample_group if k not in NOT_SETTINGS),
                key=lambda k: order.index(k) if k in order else len(order))
  return [Field(k, sample_group[k], choices.get(k), HELP.get(k, "")) for k in keys]


@dataclasses.dataclass
class Result:
  """What one request shows: images with a label each, texts, and a note for the page."""
  images: list[np.ndarray]
  labels: list[str]
  message: str
  seconds: float
  texts: list[str] = dataclasses.field(default_factory=list)


def model_image(array: np.ndarray, size: int) -> tuple[np.ndarray, str]:
  """A dropped image (HxW gray, HxWx3 RGB or HxWx4 RGBA, any size) -> (uint8 size x size x 3,
  as the tokenizer's resize and center crop make it; a note when it was resized)."""
  array = np.asarray(array)
  if array.dtype != np.uint8:
    array = np.clip(array, 0, 255).astype(np.uint8)
  image = Image.fromarray(array)
  w, h = image.size
  pixels = sources.resize_and_crop(image, size)
  note = "" if (w, h) == (size, size) else (
      f"The image was {w}x{h}: resized to {size}x{size} (shorter side, center crop), the size "
      "the image tokenizer reads.")
  return pixels, note


class Demo:
  """A loaded run and what the page asks of it. Methods raise errors.UserError for input the
  user can fix (the page shows the message); they never run two draws at once."""

  def __init__(self, run: inference.Run, scorer: Any = None, *, batch_size: int = 8,
               max_samples: int = 16):
    if batch_size < 1 or max_samples < 1:
      raise errors.ConfigError(f"--batch-size {batch_size}, --max-samples {max_samples}: "
                               "both must be >= 1")
    self.run, self.scorer = run, scorer
    self.batch_size, self.max_samples = batch_size, max_samples
    self._lock = threading.Lock()
    self._programs: dict[tuple[str, Any], Any] = {}
    family = run.family
    tok = run.image_tokenizer
    self.can_generate = family.sample_images is not None
    self.can_caption = run.setup.captions_images and tok is not None
    self.can_inpaint = family.inpaint is not None and tok is not None
    if not (self.can_generate or self.can_caption):
      raise errors.ConfigError(f"family {family.name!r} neither draws images nor captions "
                               "them: nothing to demo (a clip run is a --scorer)")
    self.fields = fields_of(run.config.get("sample") or {}, run.setup.sample)

  @property
  def family(self) -> str:
    return self.run.family.name

  @property
  def image_size(self) -> Optional[int]:
    tok = self.run.image_tokenizer
    return tok.image_size if tok is not None else self.run.setup.spec.image_size

  @property
  def text_length(self) -> int:
    return self.run.setup.spec.text_seq_len

  def defaults(self) -> dict[str, Any]:
    return {f.key: f.default for f in self.fields}

  def settings(self, values: Mapping[str, Any]) -> Any:
    """The family's frozen sampler settings: the run's config.sample with `values` (form
    values by key) in their place, checked as `upgen sample` checks its overrides."""
    unknown = sorted(set(values) - {f.key for f in self.fields})
    if unknown:
      raise errors.ConfigError(f"config.sample has no key {unknown[0]!r} in this run")
    group = dict(self.run.config.get("sample") or {})
    for f in self.fields:
      if f.key in values:
        group[f.key] = f.parse(values[f.key])
    return self.run.family.sample_config(group)

  def _program(self, what: str, settings: Any):
    """The jitted family entry for these settings, compiled once and kept."""
    key = (what, settings)
    if key not in self._programs:
      self._programs[key] = jax.jit(functools.partial(
          self.run.family.can(what), model=self.run.setup.model, settings=settings))
    return self._programs[key]

  def _draw(self, what: str, settings: Any, arrays: Sequence[np.ndarray], seed: int
            ) -> np.ndarray:
    """Rows through the program in batches of batch_size (the last padded), so a request of
    any size reuses one compiled program; row i's draw does not depend on how many rows."""
    return batching.run_batched(self._program(what, settings), self.run.params, arrays,
                                self.batch_size, seed, fixed=True)

  @staticmethod
  def _seed(seed: Any) -> int:
    try:
      return int(seed)
    except (TypeError, ValueError):
      raise errors.ConfigError(f"seed {seed!r}: a whole number please") from None

  def _count(self, num: Any, candidates: Any = 1) -> tuple[int, int]:
    try:
      num, candidates = int(num), int(candidates)
    except (TypeError, ValueError):
      raise errors.ConfigError(f"number of samples {num!r}, candidates {candidates!r}: "
                               "whole numbers please") from None
    if not 1 <= num <= self.max_samples:
      raise errors.ConfigError(f"number of samples {num}: choose 1 to {self.max_samples} "
                               "(--max-samples)")
    if candidates < 1 or (candidates > 1 and self.scorer is None):
      raise errors.ConfigError(f"best of {candidates}: reranking needs a scorer "
                               "(start the demo with --scorer CLIP_RUN)" if candidates > 1
                               else f"best of {candidates}: must be >= 1")
    return num, candidates

  def _prompt(self, prompt: Optional[str]) -> tuple[str, list[str]]:
    prompt = (prompt or "").strip()
    if not prompt:
      raise errors.ConfigError("the prompt is empty: type a caption first")
    _, notes = inference.prompt_notes(self.run, prompt)
    return prompt, [f"Note: the prompt is {note}." if note.startswith("truncated") else
                    f"Note: {note}." for note in notes]

  def _best_of(self, prompt: str, images: np.ndarray, num: int, candidates: int
               ) -> tuple[np.ndarray, list[str]]:
    """Each consecutive `candidates` images -> the one of highest CLIP score with `prompt`."""
    if candidates == 1:
      return images, [f"{i + 1}" for i in range(num)]
    cosine = self.scorer.cosine(images, [prompt] * len(images), self.batch_size, fixed=True)
    scores = inference.clip_score(cosine).reshape(num, candidates)
    best = np.argmax(scores, axis=1)
    return (images[np.arange(num) * candidates + best],
            [f"{i + 1}: CLIP {scores[i, b]:.1f}" for i, b in enumerate(best)])

  def generate(self, prompt: Optional[str], num: Any, values: Mapping[str, Any], *,
               candidates: Any = 1, seed: Any = 0) -> Result:
    """Text->image: `num` images for `prompt` (each the best of `candidates` by the scorer)."""
    self.run.family.can("sample_images")
    prompt, notes = self._prompt(prompt)
    num, candidates = self._count(num, candidates)
    seed = self._seed(seed)
    settings = self.settings(values)
    ids, mask = inference.caption_ids(self.run, [prompt], num * candidates)
    with self._lock:
      start = time.perf_counter()
      out = self._draw("sample_images", settings, [ids, mask], seed)
      images, labels = self._best_of(prompt, inference.to_pixels(self.run, out), num,
                                     candidates)
      seconds = time.perf_counter() - start
    what = f"{num} image{'s' * (num > 1)} in {seconds:.2f} s" + (
        f", each the best of {candidates} by CLIP score" if candidates > 1 else "")
    return Result(list(images), labels,
                  "\n\n".join([f"{what} (seed {seed})", *notes]), seconds)

  def inpaint(self, prompt: Optional[str], image: Optional[np.ndarray], region: Sequence[Any],
              num: Any, values: Mapping[str, Any], *, seed: Any = 0) -> Result:
    """`num` versions of `image` with the token cells that the box X0,Y0,X1,Y1 (pixels of the
    resized image; X1, Y1 exclusive) touches regenerated from `prompt`."""
    if not self.can_inpaint:
      self.run.family.can("inpaint")
      raise errors.ConfigError("this run's records have no image tokenizer to inpaint with")
    prompt, notes = self._prompt(prompt)
    if image is None:
      raise errors.ConfigError("no image: drop the image to inpaint first")
    num, _ = self._count(num)
    seed = self._seed(seed)
    try:
      box = [int(float(v)) for v in region]
    except (TypeError, ValueError):
      raise errors.ConfigError(f"the box {list(region)}: four whole numbers please") from None
    pixels, note = model_image(image, self.image_size)
    tokens_Li, known_Li = inference.inpaint_tokens(self.run, pixels, box)
    settings = self.settings(values)
    ids, mask = inference.caption_ids(self.run, [prompt], num)
    tokens = np.repeat(tokens_Li[None], num, axis=0)
    known = np.repeat(known_Li[None], num, axis=0)
    with self._lock:
      start = time.perf_counter()
      out = self._draw("inpaint", settings, [tokens, known, ids, mask], seed)
      images = inference.to_pixels(self.run, out)
      seconds = time.perf_counter() - start
    kept = int(known_Li.sum())
    message = (f"{num} inpainted image{'s' * (num > 1)} in {seconds:.2f} s (seed {seed}; "
               f"{known_Li.size - kept} of {known_Li.size} token cells regenerated)")
    return Result(list(images), [f"{i + 1}" for i in range(num)],
                  "\n\n".join([message, *notes, *([note] if note else [])]), seconds)

  def caption(self, image: Optional[np.ndarray], num: Any, *, seed: Any = 0) -> Result:
    """Image->text: `num` captions of `image` (resized to the tokenizer's size)."""
    if not self.can_caption:
      self.run.family.can("caption_images")
      if not self.run.setup.captions_images:
        raise errors.ConfigError("this run was not trained to caption images (no paired "
                                 "example took the image->text task: "
                                 "config.loss.paired_text_mask_prob=0)")
      raise errors.ConfigError("this run's records have no image tokenizer to read images")
    if image is None:
      raise errors.ConfigError("no image: drop an image to caption first")
    num, _ = self._count(num)
    seed = self._seed(seed)
    pixels, note = model_image(image, self.image_size)
    tokens = self.run.image_tokenizer.encode(pixels[None]).reshape(1, -1)
    settings = self.run.setup.sample
    with self._lock:
      start = time.perf_counter()
      ids = self._draw("caption_images", settings, [np.repeat(tokens, num, axis=0)], seed)
      seconds = time.perf_counter() - start
    texts = [self.run.text_tokenizer.decode([int(t) for t in row]) for row in ids]
    message = f"{num} caption{'s' * (num > 1)} in {seconds:.2f} s (seed {seed})"
    return Result([pixels], ["what the model reads"],
                  "\n\n".join([message, *([note] if note else [])]), seconds, texts)

  def warm_up(self) -> float:
    """Compiles every program the page uses at the run's settings (and the scorer's); seconds."""
    start = time.perf_counter()
    words = "a"
    if self.can_generate:
      self.generate(words, 1, {}, candidates=2 if self.scorer is not None else 1)
    if self.can_caption or self.can_inpaint:
      blank = np.zeros((self.image_size, self.image_size, 3), np.uint8)
      if self.can_caption:
        self.caption(blank, 1)
      if self.can_inpaint:
        self.inpaint(words, blank, [0, 0, 1, 1], 1, {})
    return time.perf_counter() - start
