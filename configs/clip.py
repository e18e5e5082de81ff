"""CLIP: a contrastive image-text scorer on pixel records (`upgen tokenize --pixels`).

  upgen train --config configs/clip.py:tiny --workdir /tmp/clip \
      --config.data.dir=/tmp/qs/data
  upgen eval clip-score --scorer /tmp/clip --manifest SAMPLES/manifest.jsonl

Variants: tiny (CPU, 32 px shapes: 4 x 4 patches, 4 + 4 layers x 128), base (OpenAI's
ViT-B/16 at 224 px: vision 12 x 768, text 12 x 512, joint space 512). The text tower's
fields are num_layers / emb_dim / num_heads / mlp_dim; the image tower's vision_*.
"""
import ml_collections

from configs import common

SIZES = {
    # name: text (num_layers, emb_dim, num_heads, mlp_dim)
    "tiny": (4, 128, 4, 512),
    "base": (12, 512, 8, 2048),
}
VISION = {
    # name: (patch_size, layers, width, heads, mlp_dim, embed_dim)
    "tiny": (4, 4, 128, 4, 512, 128),
    "base": (16, 12, 768, 12, 3072, 512),
}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  c = common.base_config()
  common.transformer_model(c, "clip", arg, SIZES)
  (c.model.patch_size,  # Pixels per side of a ViT patch.
   c.model.vision_layers,  # Image tower blocks.
   c.model.vision_width,  # Image tower width.
   c.model.vision_heads,  # Image tower attention heads.
   c.model.vision_mlp_dim,  # Image tower MLP width.
   c.model.embed_dim) = VISION[arg]  # Joint image-text space.
  c.model.max_positions = 0  # Text position rows (CLIP: 77; 0: the captions' length).
  # The image size, vocabulary and caption length come from the records (data_spec.json).

  c.loss.max_scale = 100.0  # Cap on the learned temperature exp(logit_scale) (CLIP's).
  # Per caption, this many captions one token away (another caption's token in its place)
  # as extra negatives for its image: what tells a circle from a square (models/clip.py).
  c.loss.hard_negatives = 0

  # Its caption against those one attribute away, per attribute (evaluators/hard_negatives.py).
  c.evals.hard_negatives = ml_collections.ConfigDict(dict(type="hard_negatives", num=128))
  common.token_records(c, text_dropout=0.0)
  # Every example is a pair: modality dropout would only remove positives.
  if arg == "tiny":
    common.train_recipe(c, batch_size=128,  # Negatives per example: the batch.
                        text_seq_len=12, lr=1e-3, warmup_steps=100, weight_decay=0.1,
                        steps=2000, log_every=25, checkpoint_every=500)
  else:
    common.train_recipe(c, batch_size=32_768,  # CLIP's.
                        text_seq_len=76, lr=5e-4, warmup_steps=2000, weight_decay=0.2,
                        steps=100_000, log_every=100, checkpoint_every=2000)
    c.model.max_positions = 77
    c.model.dtype = "bfloat16"
    c.optim.b2 = 0.98
    c.optim.eps = 1e-6
  return c
