"""DALL-E: decoder-only transformer over [caption; begin-of-image; image tokens].

  upgen train --config configs/dalle.py:tiny --workdir /tmp/dalle \
      --config.data.dir=/tmp/qs/data --config.train.steps=2000
  upgen quickstart --workdir /tmp/qs_dalle --family dalle

Variants: tiny (CPU smoke / quickstart), base, large (24 x 1024, 16 heads, MLP 4096: about
300M parameters, like UPGen-L). Design notes: docs/dalle.md.
"""
import ml_collections

from configs import common

SIZES = {
    # name: (num_layers, emb_dim, num_heads, mlp_dim)
    "tiny": (4, 128, 4, 512),
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  c = common.base_config()
  common.transformer_model(c, "dalle", arg, SIZES)
  c.model.scan_layers = arg == "large"
  # Vocabularies, the token grid and special ids come from the records (data_spec.json).

  # Loss: per-modality means, mixed by these weights (DALL-E: 1/8 text, 7/8 image).
  c.loss.text_loss_weight = 0.125  # Weight of the caption-token cross-entropy.
  c.loss.image_loss_weight = 0.875  # Weight of the image-token cross-entropy.
  # Probability that training replaces a caption by pads (the unconditional stream that
  # classifier-free guidance contrasts with). Applied in the loss, so validation losses
  # are always conditional.
  c.loss.caption_dropout = 0.1

  # Pipeline caption dropout 0: loss.caption_dropout does it, in the loss.
  common.token_records(c, text_dropout=0.0)

  c.sample = ml_collections.ConfigDict()
  c.sample.temperature = 1.0  # Softmax temperature (0 = greedy).
  c.sample.top_k = 0  # Sample among the k most likely tokens (0 = all).
  c.sample.top_p = 1.0  # Nucleus: the most likely tokens holding this much mass (1 = all).
  # Classifier-free guidance: (1 + s) * cond - s * uncond logits (0 = unguided).
  c.sample.guidance_scale = 2.0
  c.sample.beam_size = 0  # > 0: beam search with this many beams instead of sampling.
  c.sample.per_prompt = 4  # Samples per prompt in `upgen sample`.

  if arg == "tiny":
    c.data.batch_size = 64
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 50
    c.optim.weight_decay = 0.01
    c.train.steps = 1000
    c.train.log_every = 10
    c.train.checkpoint_every = 200
    c.train.sample_every = 250
    # Measured on one quickstart model (docs/results.md): 0.71 of validation captions drawn
    # at temperature 1 with guidance 2, 0.965 at temperature 0.5 with guidance 1.
    c.sample.temperature = 0.5
    c.sample.guidance_scale = 1.0
  else:
    common.accelerator_recipe(c)
  return c
