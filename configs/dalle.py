"""DALL-E: decoder-only transformer over [caption; begin-of-image; image tokens].

  upgen train --config configs/dalle.py:tiny --workdir /tmp/dalle \
      --config.data.dir=/tmp/qs/data --config.train.steps=2000
  upgen quickstart --workdir /tmp/qs_dalle --family dalle

Variants: tiny (CPU smoke / quickstart), gpt2_tiny (the "gpt2" architecture at tiny's size),
base, large (24 x 1024, 16 heads, MLP 4096: about
300M parameters, like UPGen-L). Design notes: docs/dalle.md.
"""
import ml_collections

from configs import common

SIZES = {
    # name: (num_layers, emb_dim, num_heads, mlp_dim)
    "tiny": (4, 128, 4, 512),
    "gpt2_tiny": (4, 128, 4, 512),  # The "gpt2" architecture at tiny's size (CPU).
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  c = common.base_config()
  common.transformer_model(c, "dalle", arg, SIZES)
  c.model.scan_layers = arg == "large"
  # "dalle": DALL-E's stream (per-position caption pads, row + column image positions,
  # separate text and image heads). "gpt2": GPT-2's network over <doc> <text> caption
  # </text> <image> codes </image> </doc> documents (tied embeddings, learned absolute
  # positions), what a pretrained GPT-2 needs (`upgen import hf --family dalle`; docs/dalle.md).
  c.model.architecture = "dalle"
  c.model.max_positions = 0  # "gpt2": position table rows (GPT-2: 1024; 0: the document's).
  # "gpt2": logits against the token table (GPT-2's tied head); False: an output table of
  # its own (an imported GPT-2 with tie_word_embeddings=false).
  c.model.tie_embeddings = True
  # "gpt2": an imported LM's vocabulary rows (its config.json vocab_size) where more than
  # its tokenizer's ids, all kept as text ids as transformers keeps them; 0: the tokenizer's.
  c.model.lm_vocab_size = 0
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

  common.autoregressive_recipe(c, "tiny" if arg == "gpt2_tiny" else arg)
  if arg == "gpt2_tiny":
    # GPT-2's network, for a language model pretrained here (text-only records, e.g. `upgen
    # data docstrings`) and its adaptation to images (docs/dalle.md): 128 positions hold a
    # 64-token line or a document of a 12-token caption and 64 codes.
    c.model.architecture = "gpt2"
    c.model.max_positions = 128
    # Text skill during training: --config.evals.text_ppl.text=FILE (plain text, a sequence
    # per line, e.g. DOCS/val.txt of `upgen data docstrings`) logs text_ppl/perplexity.
    c.evals.text_ppl = ml_collections.ConfigDict({"type": "text_ppl", "text": "",
                                                  "max_lines": 256, "batch_size": 16})
  return c
