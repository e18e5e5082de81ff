"""DALL-E's discrete VAE (dVAE) image tokenizer, trained by the same trainer on images.

  upgen train --config configs/dvae.py:tiny --workdir /tmp/dvae --config.data.dir=/tmp/shapes

  upgen train --config configs/dvae.py:base --workdir /tmp/dvae256 --config.data.dir=IMAGES

data.dir is a folder of images with captions.jsonl (as `upgen data shapes` writes, one
folder per split: DIR/train, DIR/val). `upgen tokenize --image-tokenizer WORKDIR` takes the
run as it takes a VQGAN's.
"""
import ml_collections

from upgen import errors
from configs import common


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  if arg not in ("tiny", "base"):
    raise errors.ConfigError(f"configs/dvae.py: unknown variant {arg!r}; choose tiny or base")
  c = common.base_config()
  c.model.family = "dvae"
  c.model.size = arg
  c.model.base_channels = 32  # Channels of the first group (DALL-E's n_hid).
  c.model.channel_multipliers = (1, 2, 4)  # One entry per group; len-1 downsamplings.
  c.model.num_res_blocks = 1  # Residual blocks per group (branches scaled by 1/n_layers^2).
  c.model.codebook_size = 64  # Number of codes K (logits per grid cell).
  c.model.decoder_init_channels = 32  # Width of the decoder's input 1x1 conv (DALL-E's n_init).

  c.loss.kl_weight = 6.6  # Final weight of the KL to the uniform prior (DALL-E's beta).
  c.loss.kl_warmup_steps = 5000  # Steps over which the KL weight ramps 0 -> kl_weight (cosine).
  c.loss.temperature_start = 1.0  # Gumbel-softmax temperature at step 0 ...
  c.loss.temperature_end = 1.0 / 16  # ... annealed (cosine) to this ...
  c.loss.temperature_steps = 150_000  # ... over this many steps.

  c.data.image_size = 32  # Training / tokenization resolution (square; resize + center crop).
  c.data.train_split = "train"
  c.data.val_split = "val"

  if arg == "tiny":
    # 8x8 grid of 64 codes on a 2-core CPU; the schedules compressed to the run's length.
    c.model.base_channels = 16
    c.model.decoder_init_channels = 16
    c.loss.kl_warmup_steps = 400
    c.loss.temperature_steps = 1200
    common.train_recipe(c, batch_size=32, lr=3e-3, warmup_steps=50, weight_decay=0.0,
                        steps=1600, log_every=50, checkpoint_every=800, sample_every=400)
  else:
    # DALL-E's dVAE: 256 px -> 32x32 grid of 8192 codes, n_hid 256, 4 groups of 2 blocks,
    # Adam at 1e-4 with weight decay 1e-4, batch 512.
    c.data.image_size = 256
    c.model.base_channels = 256
    c.model.channel_multipliers = (1, 2, 4, 8)
    c.model.num_res_blocks = 2
    c.model.codebook_size = 8192
    c.model.decoder_init_channels = 128
    c.model.dtype = "bfloat16"
    c.optim.b2 = 0.999
    common.train_recipe(c, batch_size=512, lr=1e-4, warmup_steps=5000, weight_decay=1e-4,
                        steps=1_200_000, checkpoint_every=5000, sample_every=5000)
  return c
