"""transformers' GPT-2 as the decoder-only family's "gpt2" architecture, both ways:
`upgen import hf --family dalle` (`import_hf`) and `upgen export hf` (`export_hf`).

GPT-2's Conv1D layers compute x @ W + b. Their weights are (in, out) in PyTorch files and
(out, in) in Flax ones (FlaxConv1D contracts the input with the kernel's last axis);
models/hf_weights.py turns PyTorch names and layouts into Flax ones (transposing every 2-D
"weight"), so both arrive here (out, in), and our Dense kernels are their transpose. The
fused c_attn (3E, E) holds the query, key and value rows in that order, heads major.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Optional

import jax
import numpy as np

from upgen import errors
from upgen.models import hf_weights

_BLOCK = {"ln_1": "ln_attn", "ln_2": "ln_mlp"}


def _check(hf: Mapping[str, Any]) -> None:
  if hf.get("model_type") not in ("gpt2", None):
    raise errors.ConfigError(f"config.json: model_type={hf.get('model_type')!r}, not a GPT-2")
  if hf.get("activation_function", "gelu_new") != "gelu_new":
    raise errors.ConfigError(f"config.json: activation_function="
                             f"{hf.get('activation_function')!r}; the gpt2 architecture here "
                             "is GPT-2's 'gelu_new' (tanh GELU)")
  if float(hf.get("layer_norm_epsilon", 1e-5)) != 1e-5:
    raise errors.ConfigError(f"config.json: layer_norm_epsilon={hf['layer_norm_epsilon']}; "
                             "the gpt2 architecture here has GPT-2's 1e-5")
  for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                    ("add_cross_attention", False)):
    if bool(hf.get(key, want)) != want:
      raise errors.ConfigError(f"config.json: {key}={hf[key]}; only {want} is supported")


def import_hf(hf: Mapping[str, Any], weights: Mapping[str, np.ndarray],
              text_vocab_size: Optional[int] = None) -> hf_weights.HFImport:
  """A transformers GPT-2 (FlaxGPT2Model / FlaxGPT2LMHeadModel or their PyTorch files):
  the token table (its first `text_vocab_size` rows when the directory's tokenizer has fewer
  ids than the table), the position table and every block. The rows the vocabulary
  expansion adds (document tokens, <pad>, image codes) start as config.train.init_new_rows
  says."""
  _check(hf)
  e, heads, n = int(hf["n_embd"]), int(hf["n_head"]), int(hf["n_layer"])
  model = {"architecture": "gpt2", "emb_dim": e, "num_heads": heads, "num_layers": n,
           "mlp_dim": int(hf.get("n_inner") or 4 * e),
           "max_positions": int(hf["n_positions"]),
           "dropout_rate": float(hf.get("resid_pdrop", 0.0)),
           "attention_dropout_rate": float(hf.get("attn_pdrop", 0.0))}
  take = hf_weights.WeightReader(weights, "GPT-2", prefix="transformer/")
  params, notes = {}, []

  wte = take("wte/embedding")
  if text_vocab_size is not None and text_vocab_size < wte.shape[0]:
    notes.append(f"wte {wte.shape}: its first {text_vocab_size} rows (the tokenizer's ids) "
                 "-> token_embed; the rest are padding")
    wte = wte[:text_vocab_size]
  elif text_vocab_size is not None and text_vocab_size > wte.shape[0]:
    raise errors.DataError(f"the tokenizer has {text_vocab_size} ids but wte only "
                           f"{wte.shape[0]} rows")
  params["token_embed"] = {"embedding": wte}
  params["pos_embed"] = take("wpe/embedding")
  params["final_norm"] = {"LayerNorm_0": {p: take(f"ln_f/{p}") for p in ("scale", "bias")}}
  notes.append(f"token_embed: {wte.shape[0]} text rows; the model's table grows by the "
               "document tokens, <pad> and the image codebook at training time")
  blocks = {}
  for i in range(n):
    src, blk = f"h/{i}", {}
    for hf_ln, ours in _BLOCK.items():
      blk[ours] = {"LayerNorm_0": {p: take(f"{src}/{hf_ln}/{p}") for p in ("scale", "bias")}}
    qkv_k, qkv_b = take(f"{src}/attn/c_attn/kernel"), take(f"{src}/attn/c_attn/bias")
    if qkv_k.shape != (3 * e, e):
      raise errors.DataError(f"{src}/attn/c_attn/kernel is {qkv_k.shape}, expected "
                             f"{(3 * e, e)} (out, in)")
    attn = {}
    for j, name in enumerate(("query", "key", "value")):
      attn[name] = {"kernel": qkv_k[j * e:(j + 1) * e].T.reshape(e, heads, e // heads),
                    "bias": qkv_b[j * e:(j + 1) * e].reshape(heads, e // heads)}
    attn["out"] = {"kernel": take(f"{src}/attn/c_proj/kernel").T.reshape(heads, e // heads, e),
                   "bias": take(f"{src}/attn/c_proj/bias")}
    blk["attn"] = attn
    blk["mlp"] = {ours: {"kernel": take(f"{src}/mlp/{hf_fc}/kernel").T,
                         "bias": take(f"{src}/mlp/{hf_fc}/bias")}
                  for hf_fc, ours in (("c_fc", "wi"), ("c_proj", "wo"))}
    blocks[f"layers_{i}"] = blk
  params["decoder"] = blocks
  skipped = take.unused()
  if skipped:
    notes.append(f"not used: {', '.join(skipped)} (a tied LM head is the token table)")
  return hf_weights.HFImport(model=model, params=params, notes=notes)


def export_hf(params: Mapping[str, Any], model: Any, rows: int
              ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(config.json, weights by Flax name "transformer/h/0/...") of a FlaxGPT2LMHeadModel
  with the run's parameters: the first `rows` rows of the token table, the position table,
  every block (unrolled), the final LayerNorm."""
  p = {k: v for k, v in params.items()}
  e, heads = model.emb_dim, model.num_heads
  blocks = p["decoder"]
  if "layers" in blocks:  # Scanned: unstack the leading layer axis.
    stacked = blocks["layers"]
    blocks = {f"layers_{i}": jax.tree.map(lambda x, i=i: np.asarray(x)[i], stacked)
              for i in range(model.num_layers)}
  out = {"transformer/wte/embedding": np.asarray(p["token_embed"]["embedding"])[:rows],
         "transformer/wpe/embedding": np.asarray(p["pos_embed"])}
  for part in ("scale", "bias"):
    out[f"transformer/ln_f/{part}"] = np.asarray(p["final_norm"]["LayerNorm_0"][part])
  for i in range(model.num_layers):
    blk, dst = blocks[f"layers_{i}"], f"transformer/h/{i}"
    for hf_ln, ours in _BLOCK.items():
      for part in ("scale", "bias"):
        out[f"{dst}/{hf_ln}/{part}"] = np.asarray(blk[ours]["LayerNorm_0"][part])
    attn = blk["attn"]
    out[f"{dst}/attn/c_attn/kernel"] = np.concatenate(
        [np.asarray(attn[n]["kernel"]).reshape(e, e).T for n in ("query", "key", "value")])
    out[f"{dst}/attn/c_attn/bias"] = np.concatenate(
        [np.asarray(attn[n]["bias"]).reshape(e) for n in ("query", "key", "value")])
    out[f"{dst}/attn/c_proj/kernel"] = np.asarray(attn["out"]["kernel"]).reshape(e, e).T
    out[f"{dst}/attn/c_proj/bias"] = np.asarray(attn["out"]["bias"])
    for hf_fc, ours in (("c_fc", "wi"), ("c_proj", "wo")):
      out[f"{dst}/mlp/{hf_fc}/kernel"] = np.asarray(blk["mlp"][ours]["kernel"]).T
      out[f"{dst}/mlp/{hf_fc}/bias"] = np.asarray(blk["mlp"][ours]["bias"])
  config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": int(rows), "n_positions": int(out["transformer/wpe/embedding"].shape[0]),
            "n_embd": int(e), "n_layer": int(model.num_layers), "n_head": int(heads),
            "n_inner": int(model.mlp_dim), "activation_function": "gelu_new",
            "layer_norm_epsilon": 1e-5, "resid_pdrop": float(model.dropout_rate),
            "embd_pdrop": float(model.dropout_rate),
            "attn_pdrop": float(model.attention_dropout_rate), "tie_word_embeddings": True,
            "scale_attn_weights": True, "use_cache": True}
  return config, {k: np.asarray(v, np.float32) for k, v in out.items()}


def dump_config(config: Mapping[str, Any], path: str) -> None:
  with open(path, "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
