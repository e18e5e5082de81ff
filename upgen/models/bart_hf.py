"""transformers' BART weights as the encoder-decoder family's "bart" architecture
(`upgen import hf --family bart`; models/hf_weights.py reads the files, this maps the names)."""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from upgen import errors
from upgen.models import hf_weights
from upgen.models import layers

_BLOCK = {"self_attn": "attn", "encoder_attn": "cross_attn", "self_attn_layer_norm": "ln_attn",
          "encoder_attn_layer_norm": "ln_cross", "final_layer_norm": "ln_mlp"}
_PROJ = {"q_proj": "query", "k_proj": "key", "v_proj": "value", "out_proj": "out"}


def _set(tree: dict, path: str, value: Any) -> None:
  *parents, leaf = path.split("/")
  for p in parents:
    tree = tree.setdefault(p, {})
  tree[leaf] = value


def import_hf(hf: Mapping[str, Any], weights: Mapping[str, hf_weights.Tensor],
              tokenizer: Optional[Any] = None) -> hf_weights.HFImport:
  """A transformers BART (FlaxBartModel / ...ForConditionalGeneration, or their PyTorch
  files) as this family's "bart" architecture: the caption embedding and positions, every
  encoder and decoder block, both embedding LayerNorms, and the decoder's position table
  (the first Li + 2 rows start the image positions). The image embeddings and head depend on
  the image tokenizer and start fresh. Every tensor has the shape config.json implies.
  (`tokenizer` is unused: the table keeps every row, padded.)"""
  del tokenizer
  if hf.get("model_type") not in ("bart", None):
    raise errors.ConfigError(f"config.json: model_type={hf.get('model_type')!r}, not a BART")
  for key in ("normalize_before", "add_final_layer_norm"):
    if hf.get(key):
      raise errors.ConfigError(f"config.json: {key}=true (an mBART-style pre-LN model); the "
                               "bart architecture here is BART's post-LN")
  if hf.get("activation_function", "gelu") != "gelu":
    raise errors.ConfigError(f"config.json: activation_function="
                             f"{hf.get('activation_function')!r}; BART's is the exact 'gelu'")
  size = lambda key, what: hf_weights.field(hf, key, what)
  for a, b in (("encoder_attention_heads", "decoder_attention_heads"),
               ("encoder_ffn_dim", "decoder_ffn_dim")):
    if size(a, "BART's sizes") != size(b, "BART's sizes"):
      raise errors.ConfigError(f"config.json: {a}={hf[a]} but {b}={hf[b]}; upgen's encoder and "
                               "decoder share one width")
  e, heads = size("d_model", "BART's width"), hf["encoder_attention_heads"]
  if e % heads:
    raise errors.ConfigError(f"config.json: d_model={e} is not a multiple of "
                             f"encoder_attention_heads={heads}")
  ffn, positions = hf["encoder_ffn_dim"], size("max_position_embeddings", "position rows")
  model = {"architecture": "bart", "emb_dim": e, "num_heads": heads,
           "mlp_dim": ffn, "encoder_layers": size("encoder_layers", "encoder blocks"),
           "num_layers": size("decoder_layers", "decoder blocks"),
           "max_positions": positions,
           "scale_embedding": bool(hf.get("scale_embedding", False)),
           "dropout_rate": float(hf.get("dropout", 0.0)),
           "attention_dropout_rate": float(hf.get("attention_dropout", 0.0))}
  take = hf_weights.WeightReader(weights, "BART", prefix="model/")
  params, notes = {}, []

  shared = take("shared/embedding", (size("vocab_size", "token table rows"), e))
  rows = layers.pad_vocab(shared.shape[0])
  _set(params, "text_embed/embedding", np.pad(shared, ((0, rows - shared.shape[0]), (0, 0))))
  notes.append(f"shared/embedding {shared.shape} -> text_embed ({rows} rows, the last "
               f"{rows - shared.shape[0]} zero: padding to a multiple of 128)")
  # BART's learned positions are offset by 2: max_position_embeddings + 2 rows.
  _set(params, "text_pos", take("encoder/embed_positions/embedding", (positions + 2, e)))
  _set(params, "image_pos", take("decoder/embed_positions/embedding", (positions + 2, e)))
  notes.append("decoder/embed_positions -> image_pos (training starts from its first Li + 2 "
               "rows)")
  for side in ("encoder", "decoder"):
    for part in ("scale", "bias"):
      _set(params, f"{side}_embed_norm/LayerNorm_0/{part}",
           take(f"{side}/layernorm_embedding/{part}", (e,)))
    count = model["encoder_layers" if side == "encoder" else "num_layers"]
    for i in range(count):
      src, dst = f"{side}/layers/{i}", f"{side}/layers_{i}"
      for hf_sub, ours in _BLOCK.items():
        if side == "encoder" and "encoder_attn" in hf_sub:
          continue
        if hf_sub.endswith("layer_norm"):
          for part in ("scale", "bias"):
            _set(params, f"{dst}/{ours}/LayerNorm_0/{part}",
                 take(f"{src}/{hf_sub}/{part}", (e,)))
          continue
        for hf_proj, proj in _PROJ.items():
          kernel = take(f"{src}/{hf_sub}/{hf_proj}/kernel", (e, e))
          bias = take(f"{src}/{hf_sub}/{hf_proj}/bias", (e,))
          if proj == "out":
            kernel, bias = kernel.reshape(heads, e // heads, e), bias
          else:
            kernel, bias = kernel.reshape(e, heads, e // heads), bias.reshape(heads, e // heads)
          _set(params, f"{dst}/{ours}/{proj}/kernel", kernel)
          _set(params, f"{dst}/{ours}/{proj}/bias", bias)
      for hf_fc, ours, d_in, d_out in (("fc1", "wi", e, ffn), ("fc2", "wo", ffn, e)):
        _set(params, f"{dst}/mlp/{ours}/kernel", take(f"{src}/{hf_fc}/kernel", (d_in, d_out)))
        _set(params, f"{dst}/mlp/{ours}/bias", take(f"{src}/{hf_fc}/bias", (d_out,)))
  skipped = take.unused()
  if skipped:
    notes.append(f"not used: {', '.join(skipped)} (the text LM head and its bias, and copies "
                 "of the shared embedding)")
  return hf_weights.HFImport(model=model, params=params, notes=notes)
