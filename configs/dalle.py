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
  if arg not in SIZES:
    raise ValueError(f"configs/dalle.py: unknown variant {arg!r}; choose from {sorted(SIZES)}")
  layers, width, heads, mlp = SIZES[arg]
  c = common.base_config()
  c.model.family = "dalle"
  c.model.size = arg  # Name of the size variant (informational).
  c.model.num_layers = layers  # Transformer blocks.
  c.model.emb_dim = width  # Residual stream width.
  c.model.num_heads = heads  # Attention heads.
  c.model.mlp_dim = mlp  # Hidden width of the MLP.
  c.model.dropout_rate = 0.0  # Dropout on residual branches and embeddings.
  c.model.attention_dropout_rate = 0.0  # Dropout on attention weights.
  c.model.attention_impl = ""  # jax.nn.dot_product_attention: "" (jax picks), "xla", "cudnn".
  # nn.scan over blocks: one compiled block instead of N (faster compiles for deep models).
  c.model.scan_layers = arg == "large"
  c.model.remat = "none"  # Rematerialization: "none", "full", "dots", "dots_no_batch".
  # Vocabularies, the token grid and special ids come from the records (data_spec.json).

  # Loss: per-modality means, mixed by these weights (DALL-E: 1/8 text, 7/8 image).
  c.loss.text_loss_weight = 0.125  # Weight of the caption-token cross-entropy.
  c.loss.image_loss_weight = 0.875  # Weight of the image-token cross-entropy.
  # Probability that training replaces a caption by pads (the unconditional stream that
  # classifier-free guidance contrasts with). Applied in the loss, so validation losses
  # are always conditional.
  c.loss.caption_dropout = 0.1

  c.data.train_split = "train"  # Split trained on.
  c.data.val_split = "val"  # Split for validation loss.
  c.data.text_seq_len = 12  # Caption tokens in the stream (longer captions are cut).
  # Extra record sources mixed with data.dir, "kind:weight:dir" comma separated, kind in
  # paired|image|text. data.dir has weight data.paired_weight.
  c.data.extra_sources = ""
  c.data.paired_weight = 1.0
  c.data.image_dropout = 0.0  # Fraction of paired examples shown as text-only.
  c.data.text_dropout = 0.0  # Pipeline caption dropout; 0: loss.caption_dropout does it.

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
  else:
    c.data.batch_size = 512
    c.optim.lr = 4e-4
    c.optim.warmup_steps = 5000
    c.train.steps = 200_000
    c.train.log_every = 100
    c.train.checkpoint_every = 2000
    c.train.sample_every = 5000
    c.model.dtype = "bfloat16"
    c.model.dropout_rate = 0.1
    c.data.text_seq_len = 64
  return c
