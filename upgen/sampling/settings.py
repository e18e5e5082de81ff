"""`SampleSettings`: config.sample as one frozen, hashable record for both token families
(a static argument of their jitted samplers). A family's config sets the fields its sampler
reads; the others keep their defaults. Every check names its config key.
"""
from __future__ import annotations

import dataclasses

from upgen import errors
from upgen.sampling import mask_schedule
from upgen.sampling import maskgit

KEY = "config.sample"


@dataclasses.dataclass(frozen=True)
class SampleSettings:
  per_prompt: int = 4  # Samples per prompt in `upgen sample`.
  guidance_scale: float = 0.0  # Classifier-free guidance: (1 + s) cond - s uncond; 0 = off.
  temperature: float = 1.0  # Softmax temperature of token sampling (0 = argmax).
  # MaskGIT (UPGen).
  num_steps: int = 12  # Parallel decoding steps for an image.
  schedule: str = "cosine"  # Mask schedule (upgen/sampling/mask_schedule.py).
  temperature_schedule: str = "constant"  # "constant" or "linear" (sharper late).
  choice_temperature: float = 4.5  # Gumbel noise on confidences, annealed to 0.
  text_steps: int = 4  # Parallel decoding steps for a caption (image->text).
  # Autoregressive (decoder-only).
  top_k: int = 0  # Sample among the k most likely tokens (0 = all).
  top_p: float = 1.0  # Nucleus mass (1 = all).
  beam_size: int = 0  # > 0: beam search with this many beams.

  def __post_init__(self):
    mask_schedule.check_schedule(self.schedule, f"{KEY}.schedule")
    maskgit.check_temperature_schedule(self.temperature_schedule, f"{KEY}.temperature_schedule")
    for name in ("per_prompt", "num_steps", "text_steps"):
      if getattr(self, name) < 1:
        raise errors.ConfigError(f"{KEY}.{name}={getattr(self, name)}: must be >= 1")
    for name, hint in (("temperature", "0 = argmax"), ("choice_temperature", "0 = no noise"),
                       ("guidance_scale", "0 = unguided"), ("top_k", "0 = no top-k filter"),
                       ("beam_size", "0 = sample")):
      if not getattr(self, name) >= 0:
        raise errors.ConfigError(f"{KEY}.{name}={getattr(self, name)}: must be >= 0 ({hint})")
    if not 0.0 < self.top_p <= 1.0:
      raise errors.ConfigError(
          f"{KEY}.top_p={self.top_p}: must be in (0, 1] (1 = no nucleus filter)")
          