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


def import_hf(hf: Mapping[str, Any], weights: Mapping[str, hf_weights.Tensor],
              tokenizer: Optional[Any] = None) -> hf_weights.HFImport:
  """A transformers GPT-2 (FlaxGPT2Model / FlaxGPT2LMHeadModel or their PyTorch files) as
  transformers computes it, every tensor of the shape config.json implies: the token table
  with all of its vocab_size rows (rows past the directory's tokenizer's ids are in
  transformers' softmax, so they stay in the model's: config.model.lm_vocab_size), the
  position table, every block, the final LayerNorm, and an untied LM head
  (tie_word_embeddings=false) as the model's own output table (config.model.tie_embeddings
  =False). The rows the vocabulary expansion adds (document tokens, <pad>, image codes)
  start as config.train.init_new_rows says."""
  _check(hf)
  size = lambda key, what: hf_weights.field(hf, key, what)
  e, heads = size("n_embd", "GPT-2's width"), size("n_head", "attention heads")
  n, vocab = size("n_layer", "blocks"), size("vocab_size", "token table rows")
  positions = size("n_positions", "position table rows")
  if e % heads:
    raise errors.ConfigError(f"config.json: n_embd={e} is not a multiple of n_head={heads}")
  inner = int(hf.get("n_inner") or 4 * e)
  tied = bool(hf.get("tie_word_embeddings", True))
  ids = None if tokenizer is None else tokenizer.vocab_size
  if ids is not None and ids > vocab:
    raise errors.DataError(f"the directory's tokenizer has {ids} ids but config.json "
                           f"vocab_size={vocab}: ids past the token table have no embedding")
  model = {"architecture": "gpt2", "emb_dim": e, "num_heads": heads, "num_layers": n,
           "mlp_dim": inner, "max_positions": positions, "tie_embeddings": tied,
           "dropout_rate": float(hf.get("resid_pdrop", 0.0)),
           "attention_dropout_rate": float(hf.get("attn_pdrop", 0.0))}
  notes = [f"token_embed: wte's {vocab} rows; the model's table grows by the document "
           "tokens, <pad> and the image codebook at training time"]
  if ids is None or vocab > ids:
    model["lm_vocab_size"] = vocab  # The text ids are the LM's, not only the tokenizer's.
    notes.append(f"lm_vocab_size={vocab}: " + (
        "no tokenizer in the directory" if ids is None else
        f"ids {ids}..{vocab - 1} are past the tokenizer's, but in transformers' softmax and "
        "so in the model's"))
  take = hf_weights.WeightReader(weights, "GPT-2", prefix="transformer/")
  norm = lambda name: {"LayerNorm_0": {p: take(f"{name}/{p}", (e,)) for p in ("scale", "bias")}}
  params = {"token_embed": {"embedding": take("wte/embedding", (vocab, e))},
            "pos_embed": take("wpe/embedding", (positions, e)),
            "final_norm": norm("ln_f")}
  blocks = {}
  for i in range(n):
    src, blk = f"h/{i}", {}
    for hf_ln, ours in _BLOCK.items():
      blk[ours] = norm(f"{src}/{hf_ln}")
    qkv_k = take(f"{src}/attn/c_attn/kernel", (3 * e, e))  # (out, in).
    qkv_b = take(f"{src}/attn/c_attn/bias", (3 * e,))
    attn = {}
    for j, name in enumerate(("query", "key", "value")):
      attn[name] = {"kernel": qkv_k[j * e:(j + 1) * e].T.reshape(e, heads, e // heads),
                    "bias": qkv_b[j * e:(j + 1) * e].reshape(heads, e // heads)}
    attn["out"] = {"kernel": take(f"{src}/attn/c_proj/kernel", (e, e)).T.reshape(
                       heads, e // heads, e),
                   "bias": take(f"{src}/attn/c_proj/bias", (e,))}
    blk["attn"] = attn
    blk["mlp"] = {ours: {"kernel": take(f"{src}/mlp/{hf_fc}/kernel", (d_out, d_in)).T,
                         "bias": take(f"{src}/mlp/{hf_fc}/bias", (d_out,))}
                  for hf_fc, ours, d_out, d_in in (("c_fc", "wi", inner, e),
                                                   ("c_proj", "wo", e, inner))}
    blocks[f"layers_{i}"] = blk
  params["decoder"] = blocks
  if not tied:  # A Dense kernel (in, out); our table has a row per token.
    params["lm_head"] = {"embedding": take("lm_head/kernel", (e, vocab)).T}
    notes.append("lm_head: tie_word_embeddings=false, so the model's output table")
  skipped = take.unused()
  if skipped:
    notes.append(f"not used: {', '.join(skipped)}" + (
        " (tie_word_embeddings=true: transformers' LM head is the token table)"
        if tied and "lm_head/kernel" in skipped else ""))
  return hf_weights.HFImport(model=model, params=params, notes=notes)


def export_hf(params: Mapping[str, Any], model: Any, rows: int
              ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(config.json, weights by Flax name "transformer/h/0/...") of a FlaxGPT2LMHeadModel
  with the run's parameters: the first `rows` rows of the token table, the position table,
  every block (unrolled), the final LayerNorm, and the first `rows` rows of the output table
  of a model with its own (tie_word_embeddings=false)."""
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
  if not model.tie_embeddings:  # Its own output table, as a Dense kernel (in, out).
    out["lm_head/kernel"] = np.asarray(p["lm_head"]["embedding"])[:rows].T
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
            "attn_pdrop": float(model.attention_dropout_rate),
            "tie_word_embeddings": bool(model.tie_embeddings),
            "scale_attn_weights": True, "use_cache": True}
  return config, {k: np.asarray(v, np.float32) for k, v in out.items()}


def dump_config(config: Mapping[str, Any], path: str) -> None:
  with open(path, "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
