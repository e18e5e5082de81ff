"""UPGen: masked transformer over [image tokens; text tokens].

  upgen train --config configs/upgen.py:tiny --workdir /tmp/upgen \
      --config.data.dir=/tmp/qs/data --config.train.steps=2000

Variants: tiny (CPU smoke / quickstart), base, large (ViT-L: 24 x 1024, 16 heads).
"""
import ml_collections

from configs import common

SIZES = {
    # name: (num_layers, emb_dim, num_heads, mlp_dim)
    "tiny": (4, 128, 4, 256),
    "small": (8, 384, 6, 1536),
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  c = common.base_config()
  common.transformer_model(c, "upgen", arg, SIZES)
  # Fixed sin-cos positions: "2d" (image grid rows/cols, then 1D over the text) or "1d"
  # (one sequence over [image; text]).
  c.model.position_embedding = "2d"
  # Token embedding init std. The sin-cos table has entries in [-1, 1]; tokens initialized
  # much smaller (BERT's 0.02) start as a faint signal under the positions, and on CPU
  # budgets the model then learns layout words long before it uses colour or shape words.
  c.model.embed_init_std = 1.0
  # Text padding: "tokens" (the model reads and writes [PAD] at every position after the
  # caption, so image->text decodes the caption's length) or "masked" (padding is kept out of
  # attention and never predicted; such a model cannot caption images).
  c.model.text_pads = "tokens"
  # Vocabularies, the token grid and special ids come from the records (data_spec.json).

  # Mask ratio r = schedule(u), u ~ U[0, 1), with the decoding schedules' names
  # (upgen/sampling/mask_schedule.py): "linear" (r = 1 - u), "cosine" (cos(pi/2 u)), ...
  c.loss.mask_schedule = "linear"
  # "joint": one ratio over [image; text] (UPGen); "independent": image and text of a paired
  # example draw their own ratios, so training also sees a fully masked image beside its
  # whole caption, which is the text->image sampling task.
  c.loss.paired_masking = "joint"
  # With "independent": the fraction of paired examples whose caption is masked, by its own
  # ratio (the image->text task); the rest keep it whole (text->image).
  c.loss.paired_text_mask_prob = 1.0
  # With "independent": an image->text example keeps its image whole, as when sampling
  # (False: its image is masked by its own ratio too).
  c.loss.caption_task_keeps_image = True
  c.loss.text_only_mask_ratio = 0.15  # Fixed mask ratio for text-only examples.
  c.loss.paired_image_weight = 1.0  # Loss weight, image tokens of paired examples.
  c.loss.paired_text_weight = 0.1  # Loss weight, text tokens of paired examples.
  c.loss.unpaired_image_weight = 1.0  # Loss weight, image-only examples.
  c.loss.unpaired_text_weight = 0.01  # Loss weight, text-only examples.
  # Speed levers that leave the loss as it is (upgen/models/head_loss.py): the heads run on
  # the masked positions only, gathered into a buffer of this fraction of all positions
  # (batches masking more use every position; 0 = off); and the logits in this many
  # chunks, recomputed in the backward pass, so the batch's float32 logits never exist whole.
  c.loss.logits_capacity = 0.0
  c.loss.logits_chunks = 1

  common.token_records(c, text_dropout=0.1)

  c.sample = ml_collections.ConfigDict()
  c.sample.num_steps = 12  # MaskGIT decoding steps.
  c.sample.schedule = "cosine"  # Mask schedule: cosine, linear, sqrt, square, exp.
  c.sample.temperature = 1.0  # Softmax temperature of token sampling (0 = argmax).
  # "constant", or "linear": temperature * (1 - step / num_steps), sharper as decoding ends.
  c.sample.temperature_schedule = "constant"
  c.sample.choice_temperature = 4.5  # Gumbel noise on confidences, annealed to 0.
  c.sample.guidance_scale = 2.0  # Classifier-free guidance scale (0 = unguided).
  c.sample.text_steps = 4  # Decoding steps for image->text.
  c.sample.per_prompt = 4  # Samples per prompt in `upgen sample`.

  if arg == "tiny":
    # Chosen for learning per CPU-second (docs/notes/2026-11-23-tiny-recipe-gpu.md, "Choosing the
    # tiny recipe"): at equal CPU time, batch 8 (1.8x the steps of batch 16) and an MLP of width 256
    # learned more than batch 16 and width 512 (caption fidelity 0.38 -> 0.61 in 380 s of steps).
    # The cosine mask ratio and independent masking give each paired example one of the
    # sampling tasks: half text->image (whole caption, masked image), half image->text
    # (whole image, caption masked down to all its slots), the caption loss weighted as the
    # image's. From the trade-off in docs/notes/2026-11-30-image-to-text.md ("Image->text"), two
    # seeds each: image->text exact match 0.24 (10% of examples, weight 0.1) -> 0.89 (50%, weight
    # 1), text->image fidelity 0.737 -> 0.703 on validation captions, within its seed noise.
    c.loss.mask_schedule = "cosine"
    c.loss.paired_masking = "independent"
    c.loss.paired_text_mask_prob = 0.5
    c.loss.paired_text_weight = 1.0
    common.train_recipe(c, batch_size=8, lr=3e-3, warmup_steps=50, weight_decay=0.01,
                        steps=2000, log_every=25, checkpoint_every=1000, sample_every=1000)
    # Guidance 1 beat 2 at every training length tried (0.84 vs 0.71 after 15k steps).
    c.sample.guidance_scale = 1.0
    # Tokens by argmax; the annealed confidence noise still varies the order, so samples of
    # one caption differ (docs/notes/2026-11-23-tiny-recipe-gpu.md: fidelity 0.60 -> 0.74 on the
    # quickstart model).
    c.sample.temperature = 0.0
  else:
    common.accelerator_recipe(c)
  return c
