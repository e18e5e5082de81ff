"""BART-style encoder-decoder: text encoder, decoder writing image codes (DALL-E mini).

  upgen train --config configs/bart.py:tiny --workdir /tmp/bart \
      --config.data.dir=/tmp/qs/data
  upgen quickstart --workdir /tmp/qs_bart --family bart

Variants: tiny (CPU smoke / quickstart), base (BART-base: 6 + 6 layers x 768) and large
(12 + 12 x 1024, DALL-E mini's seed), all with BART's exact architecture, so a pretrained BART
encoder can start them. Design notes: docs/bart.md.
"""
import ml_collections

from configs import common

SIZES = {
    # name: (decoder layers, emb_dim, num_heads, mlp_dim); encoder layers in ENCODER_LAYERS.
    "tiny": (4, 128, 4, 512),
    "base": (6, 768, 12, 3072),
    "large": (12, 1024, 16, 4096),
}
ENCODER_LAYERS = {"tiny": 2, "base": 6, "large": 12}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  c = common.base_config()
  common.transformer_model(c, "bart", arg, SIZES)
  c.model.encoder_layers = ENCODER_LAYERS[arg]  # Encoder blocks (num_layers: decoder blocks).
  # "bart": BART's architecture exactly (post-LN, learned positions at +2, LayerNorm on the
  # embeddings, exact GELU): what pretrained BART weights need, and on the quickstart's data
  # also the faster to train from scratch. "preln": pre-LN with fixed sin-cos positions
  # (docs/bart.md compares them).
  c.model.architecture = "bart"
  c.model.scale_embedding = False  # Token embeddings times sqrt(emb_dim) (BART: per model).
  c.model.max_positions = 0  # "bart": caption position table rows (BART: 1024; 0 = Lt + 2).

  c.loss.caption_dropout = 0.1  # Captions replaced by the empty one (guidance's other stream).
  # "image": image codes given the caption. "masked_text": pretrain the encoder alone on the
  # captions (tokens replaced by [MASK] and predicted), a run that init_from can start from.
  c.loss.objective = "image"
  c.loss.text_mask_rate = 0.3  # masked_text: share of caption tokens selected (at least one).
  # masked_text: "bert" (a selected token becomes [MASK] 80%, a random id 10%, stays 10%) or
  # "mask" (always [MASK]: the encoder then need not say what the unmasked tokens are, and
  # frozen it barely tells captions apart; docs/notes/2026-11-30-three-token-families.md).
  c.loss.text_corruption = "bert"

  common.token_records(c, text_dropout=0.0)  # Caption dropout happens in the loss.

  common.autoregressive_recipe(c, arg)
  if arg != "tiny":
    c.model.max_positions = 1024
    c.model.scan_layers = arg == "large"
    # DALL-E mini's schedule: linear warmup over the first 10% of steps, then linear decay.
    c.optim.decay = "linear"
    c.optim.warmup_steps = c.train.steps // 10
    c.optim.final_lr_frac = 0.0
  return c
