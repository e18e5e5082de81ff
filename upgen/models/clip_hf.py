"""transformers' CLIP (FlaxCLIPModel, or its PyTorch files) as the clip family
(`upgen import hf --family clip`; models/hf_weights.py reads the files, this maps the names).

The mapping is exact: the family computes what FlaxCLIPModel's get_image_features /
get_text_features compute (tests/test_clip_import.py). The image size of the pixel records
must be the model's (config.json vision_config.image_size), or the position table does not
fit; the text tokenizer's [BOS] / [EOS] frame every caption, as CLIP's tokenizer does.
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


def import_hf(hf: Mapping[str, Any], weights: Mapping[str, np.ndarray],
              text_vocab_size: Optional[int] = None) -> hf_weights.HFImport:
  """Both towers, both projections and the temperature of a transformers CLIP."""
  del text_vocab_size  # The token table keeps every row, padded.
  if hf.get("model_type") not in ("clip", None):
    raise errors.ConfigError(f"config.json: model_type={hf.get('model_type')!r}, not a CLIP")
  text_c, vision_c = hf.get("text_config") or {}, hf.get("vision_config") or {}
  _check("text_config", text_c)
  _check("vision_config", vision_c)
  t = {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
       "num_attention_heads": 8, "max_position_embeddings": 77, **text_c}
  v = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
       "num_attention_heads": 12, "patch_size": 32, **vision_c}
  model = {"emb_dim": int(t["hidden_size"]), "mlp_dim": int(t["intermediate_size"]),
           "num_layers": int(t["num_hidden_layers"]), "num_heads": int(t["num_attention_heads"]),
           "max_positions": int(t["max_position_embeddings"]),
           "patch_size": int(v["patch_size"]), "vision_width": int(v["hidden_size"]),
           "vision_mlp_dim": int(v["intermediate_size"]),
           "vision_layers": int(v["num_hidden_layers"]),
           "vision_heads": int(v["num_attention_heads"]),
           "embed_dim": int(hf.get("projection_dim", 512))}
  patch_name = "vision_model/embeddings/patch_embedding/kernel"
  pt_patch = "vision_model/embeddings/patch_embedding/embedding"
  if patch_name not in weights and pt_patch in weights:
    # PyTorch layout: a Conv2d weight (out, in, kh, kw), named like an embedding.
    conv = np.asarray(weights[pt_patch])
    weights = {k: v for k, v in weights.items() if k != pt_patch}
    weights[patch_name] = np.transpose(conv, (2, 3, 1, 0))
  take = hf_weights.WeightReader(weights, "CLIP")
  notes = []

  def blocks(src: str, count: int, width: int, heads: int) -> dict[str, Any]:
    out = {}
    for i in range(count):
      s, blk = f"{src}/encoder/layers/{i}", {}
      for hf_ln, ours in _LN.items():
        blk[ours] = {"LayerNorm_0": {p: take(f"{s}/{hf_ln}/{p}") for p in ("scale", "bias")}}
      attn = {}
      for hf_proj, ours in _PROJ.items():
        kernel, bias = take(f"{s}/self_attn/{hf_proj}/kernel"), take(f"{s}/self_attn/{hf_proj}/bias")
        if ours == "out":
          attn[ours] = {"kernel": kernel.reshape(heads, width // heads, width), "bias": bias}
        else:
          attn[ours] = {"kernel": kernel.reshape(width, heads, width // heads),
                        "bias": bias.reshape(heads, width // heads)}
      blk["attn"] = attn
      blk["mlp"] = {ours: {p: take(f"{s}/mlp/{fc}/{p}") for p in ("kernel", "bias")}
                    for fc, ours in (("fc1", "wi"), ("fc2", "wo"))}
      out[f"layers_{i}"] = blk
    return out

  ln = lambda name: {"LayerNorm_0": {p: take(f"{name}/{p}") for p in ("scale", "bias")}}
  tokens = take("text_model/embeddings/token_embedding/embedding")
  rows = layers.pad_vocab(tokens.shape[0])
  params = {
      "text_embed": {"embedding": np.pad(tokens, ((0, rows - tokens.shape[0]), (0, 0)))},
      "text_pos": take("text_model/embeddings/position_embedding/embedding"),
      "text": blocks("text_model", model["num_layers"], model["emb_dim"], model["num_heads"]),
      "text_norm": ln("text_model/final_layer_norm"),
      "text_proj": {"kernel": take("text_projection/kernel")},
      "class_embed": take("vision_model/embeddings/class_embedding"),
      "patch_embed": {"kernel": take(patch_name)},
      "vision_pos": take("vision_model/embeddings/position_embedding/embedding"),
      "vision_pre_norm": ln("vision_model/pre_layrnorm"),
      "vision": blocks("vision_model", model["vision_layers"], model["vision_width"],
                       model["vision_heads"]),
      "vision_post_norm": ln("vision_model/post_layernorm"),
      "vision_proj": {"kernel": take("visual_projection/kernel")},
      "logit_scale": take("logit_scale").reshape(()),
  }
  notes.append(f"token_embedding {tokens.shape} -> text_embed ({rows} rows, padded)")
  skipped = take.unused()
  if skipped:
    notes.append(f"not used: {', '.join(skipped)}")
  return hf_weights.HFImport(model=model, params=params, notes=notes,
                            data={"image_size": int(v.get("image_size", 224))})
