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

  common.autoregressive_recipe(c, arg)
  return c
