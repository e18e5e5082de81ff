"""VQGAN image tokenizer, trained by the same trainer on images.

  upgen train --config configs/vqgan.py:tiny --workdir /tmp/vqgan \
      --config.data.dir=/tmp/shapes

  upgen train --config configs/vqgan.py:base --workdir /tmp/vqgan256 \
      --config.data.dir=IMAGES --config.loss.lpips_weights=lpips_vgg.safetensors

data.dir is a folder of images with captions.jsonl (as `upgen data shapes` writes, one
folder per split: DIR/train, DIR/val).
"""
import ml_collections

from upgen import errors
from configs import common


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  if arg not in ("tiny", "base"):
    raise errors.ConfigError(f"configs/vqgan.py: unknown variant {arg!r}; choose tiny or base")
  c = common.base_config()
  c.model.family = "vqgan"
  c.model.size = arg
  c.model.base_channels = 32  # Channels at full resolution.
  c.model.channel_multipliers = (1, 2, 4)  # One entry per resolution; len-1 downsamplings.
  c.model.num_res_blocks = 1  # Residual blocks per resolution.
  c.model.codebook_size = 64  # Number of codes.
  c.model.embedding_dim = 16  # Code vector width.
  c.model.codebook_l2_normalize = False  # Look up codes by cosine (l2-normalized, ViT-VQGAN).
  c.model.conv_downsample = False  # Downsample by strided conv (True) or 2x2 average pool.
  c.model.norm = "group"  # Normalization in residual blocks: "group" (GroupNorm) or "none".
  c.model.discriminator = False  # A patch discriminator (params["disc"]) for the GAN loss.
  c.model.disc_channels = 32  # Discriminator width.

  c.loss.l1_weight = 1.0  # Pixel reconstruction loss weights.
  c.loss.l2_weight = 1.0
  # LPIPS-VGG perceptual loss weight (taming: 1.0); 0 turns it off. Needs lpips_weights:
  # without a file the run logs a warning and trains without the term.
  c.loss.lpips_weight = 0.0
  c.loss.lpips_weights = ""  # LPIPS-VGG safetensors file (scripts/convert_lpips.py writes it).
  c.loss.commitment_cost = 0.25  # Beta of the commitment loss.
  # Pull every code toward its nearest encoder output in the batch (revives dead codes).
  c.loss.codebook_revive_weight = 0.0
  c.loss.adversarial_weight = 0.0  # Patch discriminator loss weight (needs model.discriminator).
  c.loss.adversarial_start = 2000  # Step at which the adversarial loss turns on.
  # Scale the generator loss by taming's adaptive weight ||grad L_rec|| / ||grad L_gan|| at
  # the decoder's last layer (clamped to [0, 1e4]); False: adversarial_weight alone.
  c.loss.adaptive_gan_weight = False

  c.data.image_size = 32  # Training / tokenization resolution (square; resize + center crop).
  c.data.train_split = "train"
  c.data.val_split = "val"

  if arg == "tiny":
    # 8x8 grid of 64 codes, ~32k parameters: ~10-15 steps/s on a 2-core CPU. Without
    # normalization it trains at lr 1e-2, which it needs to converge in ~1600 steps
    # (GroupNorm at this lr: ~20 dB PSNR; deeper no-norm variants diverge for some seeds).
    c.model.base_channels = 8
    c.model.channel_multipliers = (1, 2, 4)
    c.model.num_res_blocks = 0
    c.model.norm = "none"
    c.loss.codebook_revive_weight = 1.0
    common.train_recipe(c, batch_size=32, lr=1e-2, warmup_steps=50, weight_decay=0.0,
                        steps=1600, log_every=50, checkpoint_every=800, sample_every=400)
  else:
    c.data.image_size = 256
    c.model.base_channels = 128
    c.model.channel_multipliers = (1, 1, 2, 2, 4)
    c.model.num_res_blocks = 2
    c.model.codebook_size = 1024
    c.model.embedding_dim = 256
    c.model.discriminator = True
    # taming's recipe: LPIPS at weight 1 (with --config.loss.lpips_weights=FILE; without
    # one the run warns and trains on pixels alone), the adaptive GAN weight scaled by 0.8
    # (taming's disc_weight), the discriminator started late.
    c.loss.lpips_weight = 1.0
    c.loss.adaptive_gan_weight = True
    c.loss.adversarial_weight = 0.8
    c.loss.adversarial_start = 20000
    c.model.dtype = "bfloat16"
    common.train_recipe(c, batch_size=256, lr=1e-4, steps=500_000, checkpoint_every=5000,
                        sample_every=5000)
  return c
