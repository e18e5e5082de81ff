"""transformers' CLIP (FlaxCLIPModel, or its PyTorch files) as the clip family
(`upgen import hf --family clip`; models/hf_weights.py reads the files, this maps the names).

The mapping is exact: the family computes what FlaxCLIPModel's get_image_features /
get_text_features compute (tests/test_clip_import.py). The image size of the pixel records
must be the model's (config.json vision_config.image_size), or the position table does not
fit; the text tokenizer's [BOS] / [EOS] frame every caption, as CLIP's tokenizer does, and
the text is pooled at the [EOS], which must be where transformers pools (`_pooling`).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from upgen import errors
from upgen.models import hf_weights
from upgen.models import layers

_LN = {"layer_norm1": "ln_attn", "layer_norm2": "ln_mlp"}
_PROJ = {"q_proj": "query", "k_proj": "key", "v_proj": "value", "out_proj": "out"}


def _check(tower: str, c: Mapping[str, Any]) -> None:
  if c.get("hidden_act", "quick_gelu") != "quick_gelu":
    raise errors.ConfigError(f"config.json: {tower}.hidden_act={c['hidden_act']!r}; the clip "
                             "family has OpenAI CLIP's quick_gelu")
  if float(c.get("layer_norm_eps", 1e-5)) != 1e-5:
    raise errors.ConfigError(f"config.json: {tower}.layer_norm_eps={c['layer_norm_eps']}; the "
                             "clip family has 1e-5")


def _pooling(hf: Mapping[str, Any], text_c: Mapping[str, Any], tokenizer: Any) -> str:
  """Where transformers pools the text (CLIPTextTransformer, 4.57): text_config.eos_token_id
  2 is its legacy rule, the largest input id (argmax); any other id, its first position.
  The clip family pools at the tokenizer's EOS: the two must be the same place, or the
  import is refused."""
  eos = int(text_c.get("eos_token_id", 49407))  # CLIPTextConfig's default.
  where = getattr(hf, "path", "config.json")
  rule = ("the largest input id (transformers' legacy rule for eos_token_id=2)" if eos == 2
          else f"the first {eos}")
  if tokenizer is None:
    return (f"pooling: transformers pools the text at {rule}; the clip family at the "
            "records' tokenizer's EOS, which must be that")
  tok_eos, ids = tokenizer.eos_id, tokenizer.vocab_size
  if eos == 2 and tok_eos is not None and tok_eos == ids - 1:
    return f"pooling: at the EOS {tok_eos}, the tokenizer's largest id, as transformers pools"
  if eos != 2 and tok_eos == eos:
    return f"pooling: at the EOS {eos}, as transformers pools"
  raise errors.ConfigError(
      f"{where}: text_config.eos_token_id={eos} but the directory's tokenizer has EOS "
      f"{tok_eos} (of {ids} ids): transformers pools the text at {rule}, the clip family at "
      "the tokenizer's EOS, so the text features would not be transformers'")


def import_hf(hf: Mapping[str, Any], weights: Mapping[str, hf_weights.Tensor],
              tokenizer: Optional[Any] = None) -> hf_weights.HFImport:
  """Both towers, both projections and the temperature of a transformers CLIP, each tensor
  of the shape config.json implies (transformers' defaults where it is silent), pooling the
  text where transformers does (`_pooling`)."""
  if hf.get("model_type") not in ("clip", None):
    raise errors.ConfigError(f"config.json: model_type={hf.get('model_type')!r}, not a CLIP")
  text_c, vision_c = hf.get("text_config") or {}, hf.get("vision_config") or {}
  _check("text_config", text_c)
  _check("vision_config", vision_c)
  # transformers' CLIPTextConfig / CLIPVisionConfig defaults.
  t = {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048,
       "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 77,
       **text_c}
  v = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
       "num_attention_heads": 12, "patch_size": 32, "image_size": 224, "num_channels": 3,
       **vision_c}
  model = {"emb_dim": int(t["hidden_size"]), "mlp_dim": int(t["intermediate_size"]),
           "num_layers": int(t["num_hidden_layers"]), "num_heads": int(t["num_attention_heads"]),
           "max_positions": int(t["max_position_embeddings"]),
           "patch_size": int(v["patch_size"]), "vision_width": int(v["hidden_size"]),
           "vision_mlp_dim": int(v["intermediate_size"]),
           "vision_layers": int(v["num_hidden_layers"]),
           "vision_heads": int(v["num_attention_heads"]),
           "embed_dim": int(hf.get("projection_dim", 512))}
  if int(v["num_channels"]) != 3:
    raise errors.ConfigError(f"config.json: vision_config.num_channels={v['num_channels']}; "
                             "the clip family reads RGB images")
  for width, heads in (("emb_dim", "num_heads"), ("vision_width", "vision_heads")):
    if model[width] % model[heads]:
      raise errors.ConfigError(f"config.json: {width} {model[width]} is not a multiple of "
                               f"{model[heads]} attention heads")
  notes = [_pooling(hf, text_c, tokenizer)]
  take = hf_weights.WeightReader(weights, "CLIP")
  ln = lambda name, width: {"LayerNorm_0": {p: take(f"{name}/{p}", (width,))
                                            for p in ("scale", "bias")}}

  def blocks(src: str, count: int, width: int, heads: int, mlp: int) -> dict[str, Any]:
    out = {}
    for i in range(count):
      s, blk = f"{src}/encoder/layers/{i}", {}
      for hf_ln, ours in _LN.items():
        blk[ours] = ln(f"{s}/{hf_ln}", width)
      attn = {}
      for hf_proj, ours in _PROJ.items():
        kernel = take(f"{s}/self_attn/{hf_proj}/kernel", (width, width))
        bias = take(f"{s}/self_attn/{hf_proj}/bias", (width,))
        if ours == "out":
          attn[ours] = {"kernel": kernel.reshape(heads, width // heads, width), "bias": bias}
        else:
          attn[ours] = {"kernel": kernel.reshape(width, heads, width // heads),
                        "bias": bias.reshape(heads, width // heads)}
      blk["attn"] = attn
      blk["mlp"] = {ours: {"kernel": take(f"{s}/mlp/{fc}/kernel", (d_in, d_out)),
                           "bias": take(f"{s}/mlp/{fc}/bias", (d_out,))}
                    for fc, ours, d_in, d_out in (("fc1", "wi", width, mlp),
                                                  ("fc2", "wo", mlp, width))}
      out[f"layers_{i}"] = blk
    return out

  e, ev, proj, patch = model["emb_dim"], model["vision_width"], model["embed_dim"], \
      model["patch_size"]
  tokens = take("text_model/embeddings/token_embedding/embedding", (int(t["vocab_size"]), e))
  rows = layers.pad_vocab(tokens.shape[0])
  grid = int(v["image_size"]) // patch
  params = {
      "text_embed": {"embedding": np.pad(tokens, ((0, rows - tokens.shape[0]), (0, 0)))},
      "text_pos": take("text_model/embeddings/position_embedding/embedding",
                       (model["max_positions"], e)),
      "text": blocks("text_model", model["num_layers"], e, model["num_heads"],
                     model["mlp_dim"]),
      "text_norm": ln("text_model/final_layer_norm", e),
      "text_proj": {"kernel": take("text_projection/kernel", (e, proj))},
      "class_embed": take("vision_model/embeddings/class_embedding", (ev,)),
      "patch_embed": {"kernel": take("vision_model/embeddings/patch_embedding/kernel",
                                     (patch, patch, 3, ev))},
      "vision_pos": take("vision_model/embeddings/position_embedding/embedding",
                         (grid * grid + 1, ev)),
      "vision_pre_norm": ln("vision_model/pre_layrnorm", ev),
      "vision": blocks("vision_model", model["vision_layers"], ev, model["vision_heads"],
                       model["vision_mlp_dim"]),
      "vision_post_norm": ln("vision_model/post_layernorm", ev),
      "vision_proj": {"kernel": take("visual_projection/kernel", (ev, proj))},
      "logit_scale": take("logit_scale", ()),
  }
  notes.append(f"token_embedding {tokens.shape} -> text_embed ({rows} rows, padded)")
  skipped = take.unused()
  if skipped:
    notes.append(f"not used: {', '.join(skipped)}")
  return hf_weights.HFImport(model=model, params=params, notes=notes,
                            data={"image_size": int(v["image_size"])})
