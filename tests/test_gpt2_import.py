"""The decoder-only family from a pretrained GPT-2, against transformers' own (4.57, the last
release with Flax models): a tiny random FlaxGPT2LMHeadModel and a byte-level BPE GPT-2
tokenizer built and saved here, in every file layout, imported by `upgen import hf --family
dalle`; its logits and `upgen eval text-ppl` equal transformers'; the expanded vocabulary
keeps the old rows' logits; cached decoding equals the full pass; then a run trains from it
with frozen groups, samples only image codes, and `upgen export hf` writes a directory
transformers loads with the same logits."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from tests import gpt2_data
from tests import hf_layouts
from tests import token_data
from upgen import cli
from upgen import errors
from upgen import families
from upgen.runtime import param_groups
from upgen.runtime import optimizer
from upgen.evaluators import text_ppl
from upgen.data.spec import DataSpec
from upgen.models import dalle
from upgen.models import dalle_gpt2
from upgen.sampling import ar_sampler
from upgen.sampling.settings import SampleSettings
from upgen.runtime import init_from

CTX, E = 32, 32  # The LM's context and width.


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
  """(transformers model, tokenizer, {layout: directory})."""
  root = tmp_path_factory.mktemp("gpt2")
  tok = gpt2_data.tokenizer(root / "tokenizer")
  model = gpt2_data.hf_model(tok, CTX, E)
  # PyTorch's Conv1D weights are (in, out): the transpose of the Flax kernels, which
  # hf_export.pytorch_layout writes.
  dirs = hf_layouts.save(model, root)
  for d in dirs.values():
    tok.save_pretrained(d)
  return model, tok, dirs


def _import(dirs, layout, out):
  assert cli.main(["import", "hf", "--from", str(dirs[layout]), "--family", "dalle",
                   "--out", str(out)]) == 0
  return str(out)


def _hf_logits(model, tok, lines):
  """transformers' logits of each line alone (no padding), cut at the context."""
  return [np.asarray(model(np.asarray([tok(l)["input_ids"][:CTX]])).logits[0]) for l in lines]


@pytest.mark.parametrize("layout", ["msgpack", "flax_safetensors", "pt_safetensors"])
def test_imported_gpt2_gives_transformers_logits(gpt2, layout, tmp_path):
  model, tok, dirs = gpt2
  init_dir = _import(dirs, layout, tmp_path / "init")
  report = json.load(open(os.path.join(init_dir, "import.json")))
  assert report["model"]["architecture"] == "gpt2" and report["model"]["max_positions"] == CTX
  assert ("PyTorch layout" in report["source"]) == (layout == "pt_safetensors")
  setup, params, ours_tok = text_ppl.load(init_dir)
  setup = _float32(setup)
  assert ours_tok.vocab_size == len(tok) and ours_tok.mask_id == -1  # GPT-2's: no [MASK].
  lines = gpt2_data.lines(3, 1, 5, 12)
  ids = [tok(l)["input_ids"] for l in lines]
  tokens, pads = text_ppl.left_padded(ids, max(map(len, ids)), 0)
  assert pads.max() > 0  # Padding in the batch.
  ours = np.asarray(setup.model.apply({"params": params}, tokens, pads))
  for row, want in enumerate(_hf_logits(model, tok, lines)):
    np.testing.assert_allclose(ours[row, pads[row]:, :len(tok)], want, atol=1e-5)
    assert np.isneginf(ours[row, :, len(tok):]).all()  # A text LM emits text ids only.


def test_text_ppl_equals_transformers_and_cuts_at_the_context(gpt2, tmp_path, capsys):
  model, tok, dirs = gpt2
  init_dir = _import(dirs, "msgpack", tmp_path / "init")
  lines = gpt2_data.lines(5, 2, 3, 60)
  assert max(len(tok(l)["input_ids"]) for l in lines) > CTX  # Some lines get cut.
  capsys.readouterr()
  path = tmp_path / "lines.txt"
  path.write_text("\n".join(lines[:2] + [""] + lines[2:]) + "\n")  # Empty lines skipped.
  assert cli.main(["eval", "text-ppl", "--workdir", init_dir, "--text", str(path),
                   "--batch-size", "2"]) == 0
  got = json.loads(capsys.readouterr().out)
  nll, count = 0.0, 0
  for line, logits in zip(lines, _hf_logits(model, tok, lines)):
    ids = tok(line)["input_ids"][:CTX]
    logp = jax.nn.log_softmax(logits[:-1].astype(np.float64), axis=-1)
    nll -= float(np.sum(np.take_along_axis(np.asarray(logp), np.asarray(ids[1:])[:, None], 1)))
    count += len(ids) - 1
  assert got["tokens"] == count and got["lines"] == 5 and got["context"] == CTX
  np.testing.assert_allclose(got["nats_per_token"], nll / count, rtol=1e-5)
  np.testing.assert_allclose(got["perplexity"], math.exp(nll / count), rtol=1e-5)


def _float32(setup):
  """The INIT's config is the accelerator recipe (bfloat16); compare in float32."""
  config = setup.model_config
  model = type(setup.model)(type(config)(**{**config.__dict__, "dtype": "float32"}))
  return families.Setup(setup.family, setup.spec, config, setup.loss, setup.sample, model)


def _doc_setup(init_dir, lt=6, vi=8, grid=(2, 2), tok=None, **model):
  config = token_data.small_config("dalle")
  with open(os.path.join(init_dir, "import.json")) as f:
    config.model.update(json.load(f)["model"])
  config.model.update(model, dtype="float32")
  spec = DataSpec(text_vocab_size=len(tok), text_pad_id=tok.eos_token_id, text_seq_len=lt,
                  image_vocab_size=vi, image_grid=grid)
  return families.build(config, spec)


def _fresh(setup, seed=0):
  return nn.unbox(dalle.init_variables(setup.model, jax.random.key(seed),
                                       setup.dummy_batch(1))["params"])


def test_expanded_vocabulary_keeps_old_logits_and_cached_decoding_is_exact(gpt2, tmp_path):
  model, tok, dirs = gpt2
  init_dir = _import(dirs, "msgpack", tmp_path / "init")
  setup = _doc_setup(init_dir, tok=tok)  # Document length 6 + 4 + 6 = 16 < CTX.
  lay = dalle_gpt2.layout(setup.model_config)
  params = init_from.apply(_fresh(setup), init_dir, new_rows="mean")
  table = np.asarray(params["token_embed"]["embedding"])
  wte = np.asarray(model.params["transformer"]["wte"]["embedding"])
  np.testing.assert_array_equal(table[:len(tok)], wte)
  np.testing.assert_allclose(table[len(tok):lay.vocab_size],
                             np.broadcast_to(wte.mean(0), (lay.vocab_size - len(tok), E)),
                             atol=1e-6)
  # The old vocabulary's logits of a text prefix are transformers'.
  line = gpt2_data.lines(1, 3, 8, 9)[0]
  ids = np.asarray([tok(line)["input_ids"]])
  ours = np.asarray(setup.model.apply({"params": params}, ids, np.zeros(1, np.int32)))
  np.testing.assert_allclose(ours[0, :, :len(tok)], _hf_logits(model, tok, [line])[0], atol=1e-5)

  # KV-cache decoding (prefill, one code per step) gives the full pass's image logits, with
  # captions of different lengths (different pads) in the batch.
  captions = [tok(c)["input_ids"][:6] for c in ("red circle", "a small blue square on top", "")]
  text, valid = np.zeros((3, 6), np.int32), np.zeros((3, 6), bool)
  for row, c in enumerate(captions):
    text[row, :len(c)], valid[row, :len(c)] = c, True
  codes = np.arange(12).reshape(3, 4) % 8
  doc, pads = dalle_gpt2.document(text, valid, codes, lay)
  full = np.asarray(setup.model.apply({"params": params}, doc[:, :-1], pads))
  first = lay.prompt_len - 1
  want = full[:, first:first + 4, lay.image_offset:lay.vocab_size]
  logits, cache = ar_sampler.prefill(params, setup.model, text, valid,
                                     ar_sampler.init_cache(setup.model, 3))
  got = [logits]
  for i in range(3):
    logits, cache = ar_sampler.step(params, setup.model, jnp.asarray(codes[:, i]), cache, i)
    got.append(logits)
  np.testing.assert_allclose(np.stack(got, 1), want, atol=1e-5)


def test_frozen_groups_stay_bit_identical_and_images_never_take_text_ids(gpt2, tmp_path):
  _, tok, dirs = gpt2
  init_dir = _import(dirs, "msgpack", tmp_path / "init")
  setup = _doc_setup(init_dir, tok=tok)
  lay = dalle_gpt2.layout(setup.model_config)
  params = init_from.apply(_fresh(setup), init_dir)
  config = token_data.small_config("dalle")
  config.optim.update(lr=1e-2, weight_decay=0.1, warmup_steps=0,
                      freeze="attention,positions,text_rows")
  tx = optimizer.for_setup(setup, config.optim, 10)
  opt_state = tx.init(params)
  rng = np.random.default_rng(0)
  batch = {"text_tokens": rng.integers(0, len(tok), (4, 6)).astype(np.int32),
           "text_mask": np.arange(6)[None] < np.array([[2], [6], [1], [4]]),
           "image_tokens": rng.integers(0, 8, (4, 4)).astype(np.int32),
           "has_image": np.ones(4, bool), "has_text": np.ones(4, bool)}
  loss_fn = setup.loss_fn()
  new = params
  for i in range(3):
    grads = jax.grad(lambda p: loss_fn(p, batch, jax.random.key(i), train=True, step=i)[0])(new)
    updates, opt_state = tx.update(grads, opt_state, new)
    new = jax.tree.map(lambda p, u: p + u, new, updates)
  flat = lambda tree: {param_groups.param_path(p): v
                        for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
  flat_old, flat_new = flat(params), flat(new)
  for name, old in flat_old.items():
    same = np.array_equal(np.asarray(old), np.asarray(flat_new[name]))
    frozen = "/attn/" in name or name == "pos_embed"
    if name == "token_embed/embedding":
      assert np.array_equal(np.asarray(old)[:len(tok)], np.asarray(flat_new[name])[:len(tok)])
      assert not np.array_equal(np.asarray(old)[lay.image_offset:lay.vocab_size],
                                np.asarray(flat_new[name])[lay.image_offset:lay.vocab_size])
    else:
      assert same == frozen, name

  # Text rows made to dominate every logit: image positions still draw only codes.
  table = np.asarray(new["token_embed"]["embedding"]).copy()
  table[:len(tok)] *= 50.0
  loud = dict(new, token_embed={"embedding": jnp.asarray(table)})
  out = ar_sampler.text_to_image(loud, setup.model, batch["text_tokens"], batch["text_mask"],
                                 jax.random.key(0), SampleSettings(guidance_scale=1.0))
  assert out.shape == (4, 4) and int(out.min()) >= 0 and int(out.max()) < 8
  full = np.asarray(setup.model.apply({"params": loud}, *dalle_gpt2.document(
      batch["text_tokens"], batch["text_mask"], batch["image_tokens"], lay)))
  assert np.argmax(full[:, lay.prompt_len - 1], -1).max() < len(tok)  # Unrestricted: text.


def test_freeze_errors_name_the_group(gpt2, tmp_path):
  _, tok, dirs = gpt2
  init_dir = _import(dirs, "msgpack", tmp_path / "init")
  setup = _doc_setup(init_dir, tok=tok, scan_layers=True)
  config = token_data.small_config("dalle")
  config.optim.freeze = "first_half"
  tx = optimizer.for_setup(setup, config.optim, 10)
  with pytest.raises(errors.ConfigError, match="first_half.*holds none"):
    tx.init(_fresh(setup))
  config.optim.freeze = "encoder"
  with pytest.raises(errors.ConfigError, match="no parameter group encoder.*first_half"):
    optimizer.for_setup(setup, config.optim, 10)
