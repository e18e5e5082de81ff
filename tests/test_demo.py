"""`upgen demo`'s logic (upgen/tools/demo.py) on the quickstart's real runs, without a browser:
the settings form, fixed-size draws, best-of-N, image->text, inpainting and the messages bad
input gets. tests/test_demo_browser.py drives the page itself in Chromium."""
import importlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from upgen.tools import demo as demo_lib
from upgen import errors
from upgen import families
from upgen import inference

ROOT = demo_lib.__file__.rsplit("/upgen/", 1)[0]
PROMPT = "a small red circle on the left"


@pytest.fixture(scope="session")  # Built once even where xdist interleaves other modules.
def demo(tiny_quickstart):
  w, _ = tiny_quickstart
  return demo_lib.Demo(inference.load_run(str(w / "model")),
                       inference.load_scorer(str(w / "scorer")),
                       batch_size=4, max_samples=8)


@pytest.mark.parametrize("family", ["upgen", "dalle", "bart", "glide"])
def test_fields_are_the_families_sampling_settings(family):
  config = importlib.import_module(f"configs.{family}").get_config("tiny")
  fields = demo_lib.fields_of(config.sample)
  assert {f.key for f in fields} == set(config.sample) - {"per_prompt", "text_steps"}
  # Each run value comes back from the form as itself, and the family accepts the lot.
  values = {f.key: f.parse(f.default) for f in fields}
  assert values == {f.key: config.sample[f.key] for f in fields}
  settings = families.get_family(family).sample_config({**config.sample, **values})
  for f in fields:
    assert getattr(settings, f.key) == f.default
    if f.choices:
      assert f.default in f.choices
  # Numbers typed into a form arrive as floats or strings: read as the setting's type.
  steps = next(f for f in fields if f.key in ("num_steps", "top_k"))
  assert steps.parse(3.0) == 3 and isinstance(steps.parse("3"), int)
  with pytest.raises(errors.ConfigError, match=f"config.sample.{steps.key}=2.5: must be an "
                     "integer"):
    steps.parse(2.5)
  with pytest.raises(errors.ConfigError, match=f"config.sample.{steps.key}: empty"):
    steps.parse(None)


def test_settings_are_checked_as_upgen_sample_checks_them(demo):
  assert demo.settings({}) == demo.run.setup.sample
  assert demo.settings({"num_steps": 3.0}).num_steps == 3
  assert demo.defaults()["num_steps"] == demo.run.config.sample.num_steps
  with pytest.raises(errors.ConfigError, match="config.sample.schedule='nope': choose one of"):
    demo.settings({"schedule": "nope"})
  with pytest.raises(errors.ConfigError, match="config.sample.temperature='warm': must be a "
                     "number"):
    demo.settings({"temperature": "warm"})
  with pytest.raises(errors.ConfigError, match="no key 'top_k' in this run"):
    demo.settings({"top_k": 3})  # A decoder-only setting: not UPGen's.


def test_requests_draw_in_fixed_batches_and_compile_once(demo):
  demo.warm_up()
  compiled = len(demo._programs)  # pylint: disable=protected-access
  assert compiled == 3  # Text->image, image->text, inpainting at the run's settings.
  three = demo.generate(PROMPT, 3, {}, seed=5)
  six = demo.generate(PROMPT, 6, {}, seed=5)
  assert len(three.images) == 3 and len(six.images) == 6
  assert all(x.shape == (32, 32, 3) and x.dtype == np.uint8 for x in six.images)
  # Batches of batch_size rows: the first three draws do not depend on how many were asked.
  for a, b in zip(three.images, six.images):
    np.testing.assert_array_equal(a, b)
  assert three.message.startswith("3 images in ") and "(seed 5)" in three.message
  assert len(demo._programs) == compiled  # pylint: disable=protected-access
  fewer = demo.generate(PROMPT, 2, {"num_steps": 2}, seed=5)  # A new setting: one program more.
  assert len(fewer.images) == 2
  assert len(demo._programs) == compiled + 1  # pylint: disable=protected-access
  # The seed matters. At the run's settings a well-fitted tiny model may draw the same image
  # for every seed, so at a high temperature: two seeds, different draws.
  hot = {"num_steps": 2, "temperature": 4.0}
  one, other = demo.generate(PROMPT, 3, hot, seed=5), demo.generate(PROMPT, 3, hot, seed=6)
  assert any(not np.array_equal(a, b) for a, b in zip(one.images, other.images))


def test_bad_input_is_a_message(demo):
  for prompt in ("", "   ", None):
    with pytest.raises(errors.ConfigError, match="the prompt is empty"):
      demo.generate(prompt, 2, {})
  with pytest.raises(errors.ConfigError, match=r"choose 1 to 8 \(--max-samples\)"):
    demo.generate(PROMPT, 9, {})
  with pytest.raises(errors.ConfigError, match="seed None: a whole number please"):
    demo.generate(PROMPT, 1, {}, seed=None)  # A cleared seed box.
  with pytest.raises(errors.ConfigError, match="reranking needs a scorer"):
    demo_lib.Demo(demo.run).generate(PROMPT, 2, {}, candidates=2)
  long = demo.generate(PROMPT + " and a large blue square on the right", 1, {})
  assert len(long.images) == 1
  assert "the prompt is truncated to the model's 12 tokens (it is " in long.message
  odd = demo.generate("a small purple circle on the left", 1, {})
  assert "'purple' not in the training captions" in odd.message
  with pytest.raises(errors.ConfigError, match="no image: drop an image"):
    demo.caption(None, 2)
  with pytest.raises(errors.ConfigError, match=r"--region 0,0,16,40: need 0 <= X0 < X1 <= 32"):
    demo.inpaint(PROMPT, np.zeros((32, 32, 3), np.uint8), [0, 0, 16, 40], 1, {})


def test_best_of_n_keeps_the_highest_scoring_draw(demo):
  draws = demo.generate(PROMPT, 4, {}, seed=3)
  best = demo.generate(PROMPT, 2, {}, candidates=2, seed=3)
  assert len(best.images) == 2 and "each the best of 2 by CLIP score" in best.message
  scores = inference.clip_score(demo.scorer.cosine(np.stack(draws.images), [PROMPT] * 4))
  for i, (image, label) in enumerate(zip(best.images, best.labels)):
    pair = scores[2 * i:2 * i + 2]
    np.testing.assert_array_equal(image, draws.images[2 * i + int(np.argmax(pair))])
    assert label == f"{i + 1}: CLIP {pair.max():.1f}"


def test_caption_reads_any_image_at_the_tokenizer_size(demo, tiny_quickstart):
  from upgen.data import sources
  w, _ = tiny_quickstart
  image = sources.load_image(str(sorted((w / "shapes" / "val" / "images").iterdir())[0]))
  same = demo.caption(image, 3, seed=1)
  assert len(same.texts) == 3 and all(isinstance(t, str) for t in same.texts)
  assert "resized" not in same.message and same.message.startswith("3 captions in ")
  np.testing.assert_array_equal(same.images[0], image)
  big = np.kron(image, np.ones((2, 3, 1), np.uint8))  # 64 x 96: resized, center cropped.
  resized = demo.caption(big, 1)
  assert "The image was 96x64: resized to 32x32" in resized.message
  assert resized.images[0].shape == (32, 32, 3)
  for other in (image[..., 0], np.concatenate([image, np.full((32, 32, 1), 255, np.uint8)], -1)):
    assert len(demo.caption(other, 1).texts) == 1  # Gray and RGBA images are read as RGB.


def test_inpaint_regenerates_the_cells_of_the_box(demo, tiny_quickstart):
  from upgen.data import sources
  w, _ = tiny_quickstart
  image = sources.load_image(str(sorted((w / "shapes" / "val" / "images").iterdir())[0]))
  out = demo.inpaint(PROMPT, image, [0, 0, 16, 32], 2, {}, seed=0)
  assert len(out.images) == 2 and out.images[0].shape == (32, 32, 3)
  assert "32 of 64 token cells regenerated" in out.message  # The left half of the 8x8 grid.


def test_a_run_without_a_checkpoint_is_refused_by_name(tmp_path, tiny_quickstart):
  w, _ = tiny_quickstart
  run = tmp_path / "no_checkpoint"
  run.mkdir()
  for name in ("config.json", "data_spec.json"):
    shutil.copy(w / "model" / name, run / name)
  out = subprocess.run([sys.executable, "-m", "upgen.cli", "demo", "--workdir", str(run)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stderr
  assert out.stderr.strip().splitlines()[-1] == (
      f"upgen demo: error: {run / 'checkpoints'}: no checkpoint to restore")


@pytest.mark.parametrize("family", ["dalle", "bart"])
def test_the_autoregressive_families_draw_on_the_page(family, tmp_path, tiny_quickstart):
  """A few steps of each token family on the quickstart's records: its own settings on the
  page (top-k, top-p, beams), images back at the tokenizer's size."""
  from upgen import cli
  w, _ = tiny_quickstart
  run = str(tmp_path / family)
  small = {"num_layers": 1, "encoder_layers": 1, "emb_dim": 32, "num_heads": 2, "mlp_dim": 64}
  config = importlib.import_module(f"configs.{family}").get_config("tiny")
  assert cli.main(["train", "--config", f"configs/{family}.py:tiny", "--workdir", run,
                   f"--config.data.dir={w / 'data'}", "--config.train.steps=2",
                   "--config.train.sample_every=0", "--config.train.progress=False",
                   "--config.train.eval_batches=1", "--config.data.batch_size=8",
                   *[f"--config.model.{k}={v}" for k, v in small.items()
                     if k in config.model]]) == 0
  page = demo_lib.Demo(inference.load_run(run), batch_size=2, max_samples=4)
  assert {"top_k", "top_p", "beam_size", "temperature"} <= {f.key for f in page.fields}
  drawn = page.generate(PROMPT, 3, {"top_k": 5, "top_p": 0.9}, seed=0)
  assert [x.shape for x in drawn.images] == [(32, 32, 3)] * 3
