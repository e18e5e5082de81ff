"""GLIDE: text-conditional diffusion in pixels (upgen/models/glide.py), on pixel records.

  upgen tokenize --pixels ...                      # or the quickstart's records
  upgen train --config configs/glide.py:tiny --workdir /tmp/glide \
      --config.data.dir=/tmp/qs/data
  upgen sample --workdir /tmp/glide --prompts prompts.txt --out /tmp/glide/samples \
      --config.sample.guidance_scale=2 --config.sample.num_steps=50

Variants:
  tiny  CPU, 32 px: the quickstart's recipe (docs/notes/2026-11-30-glide-cpu.md says how it was
  chosen).
  mini  miniGLIDE's shape: 64 px, 96 model channels, 32 channels per attention head, 100
        diffusion steps, AdamW at 1e-4; the rest as base.
  base  the released GLIDE 64 px base model: 192 channels x (1, 2, 3, 4), 3 residual blocks
        per level, attention at 32 / 16 / 8 px with 64 channels per head, resblock up/down
        sampling, scale-shift norm; text transformer 16 layers x 512, 8 heads, context 128;
        1000 steps, cosine schedule, hybrid loss, 20% empty captions.
The image size, text vocabulary and caption length come from the records (data_spec.json).
"""
import ml_collections

from configs import common
from upgen import errors

VARIANTS = {
    # name: (model_channels, channel_mult, num_res_blocks, attention_resolutions,
    #        num_head_channels, text (layers, width, heads, ctx)); tiny is for 32 px
    #        records, mini and base for 64 px.
    "tiny": (32, (1, 2, 4), 1, (8, 4), 32, (2, 128, 4, 0)),
    "mini": (96, (1, 2, 3, 4), 3, (32, 16, 8), 32, (16, 512, 8, 128)),
    "base": (192, (1, 2, 3, 4), 3, (32, 16, 8), 64, (16, 512, 8, 128)),
}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise errors.ConfigError(f"configs/glide.py: unknown variant {arg!r}; choose from "
                             f"{sorted(VARIANTS)}")
  mc, mult, blocks, attn, head_ch, (t_layers, t_width, t_heads, t_ctx) = VARIANTS[arg]
  c = common.base_config()
  c.model.family = "glide"
  c.model.size = arg
  c.model.model_channels = mc  # UNet width at the first level.
  c.model.channel_mult = mult  # Width multiplier per level (the image halves per level).
  c.model.num_res_blocks = blocks  # Residual blocks per level (down; up has one more).
  c.model.attention_resolutions = attn  # Pixel resolutions with attention blocks.
  c.model.num_head_channels = head_ch  # Channels per attention head.
  c.model.norm_groups = 32  # GroupNorm groups.
  c.model.dropout = 0.0  # In residual blocks.
  c.model.use_scale_shift_norm = True  # Timestep embedding as scale and shift of a norm.
  c.model.resblock_updown = arg != "tiny"  # Residual blocks resample (else conv / nearest).
  c.model.learn_sigma = True  # 6 output channels: epsilon and the learned-range variance.
  c.model.prediction = "epsilon"  # What the first 3 output channels predict: epsilon or v.
  # Pixels per side folded into channels around the UNet (1 = ADM; 2, 4 run it at 1/2, 1/4
  # of the resolution).
  c.model.patch_size = 1
  c.model.text_layers = t_layers  # Text transformer blocks.
  c.model.text_width = t_width  # Text transformer width.
  c.model.text_heads = t_heads  # Text transformer heads.
  c.model.text_ctx = t_ctx  # Text positions (0 = the records' caption length).
  c.model.diffusion_steps = 100 if arg == "mini" else 1000  # T.
  c.model.noise_schedule = "cosine"  # "cosine" or "linear" (tables in float64).

  c.loss.loss_type = "hybrid"  # "simple" (epsilon MSE) or "hybrid" (+ T/1000 x L_vlb, bits).
  c.loss.caption_dropout = 0.2  # Empty captions: the unconditional model of guidance.
  c.loss.timesteps = "uniform"  # "stratified": one offset, the batch spread over t.
  c.loss.min_snr_gamma = 0.0  # Min-SNR-gamma weighting of the MSE over t (0 = off).

  c.sample = ml_collections.ConfigDict()
  # "ddpm" (ancestral, with the learned variance; GLIDE's own samples) or "ddim". On the
  # quickstart's models ancestral drew 0.02-0.04 more captions at 25 steps (docs/glide.md).
  c.sample.sampler = "ddpm"
  c.sample.num_steps = 50  # Respaced sampling steps (0 = all of T).
  c.sample.eta = 0.0  # DDIM noise (0 = deterministic given the start noise).
  # Classifier-free guidance on epsilon: (1 + g) cond - g uncond; GLIDE's scale s = g + 1.
  # GLIDE's s = 3; on the quickstart's model the best of 0 / 2 / 5 / 11
  # (docs/notes/2026-11-30-glide-cpu.md).
  c.sample.guidance_scale = 2.0
  c.sample.clip_denoised = True  # Clip each step's predicted x_0 to [-1, 1].
  c.sample.per_prompt = 4  # Samples per prompt in `upgen sample`.

  common.token_records(c, text_dropout=0.0)  # Caption dropout lives in config.loss.
  c.optim.ema_decay = 0.9999  # EMA of the parameters, sampled from (ADM's).
  if arg == "tiny":
    common.train_recipe(c, batch_size=32, text_seq_len=12, lr=1e-3, warmup_steps=100,
                        weight_decay=0.0, steps=3000, log_every=25, checkpoint_every=500,
                        sample_every=1000)
    c.optim.ema_decay = 0.999
    c.sample.num_steps = 25
    # The CPU recipe (docs/notes/2026-11-30-glide-cpu.md): the UNet at 16 px on 2 x 2 patches, v
    # prediction.
    c.model.patch_size = 2
    c.model.prediction = "v"
  else:
    common.train_recipe(c, batch_size=12 if arg == "mini" else 2048,  # miniGLIDE's; GLIDE's.
                        text_seq_len=128, lr=1e-4 if arg == "mini" else 1.2e-4,
                        warmup_steps=1000, weight_decay=0.0,
                        steps=2_500_000 if arg == "base" else 250_000, log_every=100,
                        checkpoint_every=5000, sample_every=10_000)
    c.model.dtype = "bfloat16"
    c.model.dropout = 0.1
    c.optim.b2 = 0.999
    c.optim.decay = "constant"
  return c
