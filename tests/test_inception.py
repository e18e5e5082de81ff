"""Tests for upgen/evaluators/inception.py (pytorch-fid's Inception-v3 in JAX) and `upgen eval fid
--features inception:FILE`. Equality with pytorch-fid itself is tests/test_reference_metrics.py."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from upgen import errors
from upgen.evaluators import fid
from upgen.evaluators import inception


def random_tensors(seed=0):
  """pytorch-fid-named tensors: He-scaled kernels, batch norms with nontrivial statistics."""
  rng = np.random.default_rng(seed)
  out = {}
  for key, shape in inception.tensor_shapes().items():
    if key.endswith("conv.weight"):
      out[key] = rng.normal(0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
    elif key.endswith("running_var"):
      out[key] = rng.uniform(0.5, 2.0, shape)
    elif key.endswith("bn.weight"):
      out[key] = rng.uniform(0.5, 1.5, shape)
    else:
      out[key] = rng.normal(0, 0.2, shape)
  return out


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("inception") / "inception.safetensors")
  inception.save(random_tensors(), path)
  return path


def test_resize_is_bilinear_with_half_pixel_centres():
  """PyTorch's align_corners=False: source x = (i + 0.5) in/out - 0.5, clamped at 0."""
  def reference(a, out):
    n = a.shape[0]
    src = np.maximum((np.arange(out) + 0.5) * n / out - 0.5, 0)
    lo = np.minimum(np.floor(src).astype(int), n - 1)
    hi = np.minimum(lo + 1, n - 1)
    t = (src - lo).reshape((-1,) + (1,) * (a.ndim - 1))
    return a[lo] * (1 - t) + a[hi] * t  # Along the first axis.

  for n, out in ((5, 12), (40, 13), (7, 7)):
    a = np.random.default_rng(n).uniform(0, 1, (n, n))
    want = reference(reference(a, out).T, out).T
    got = np.asarray(inception.resize(jnp.asarray(a)[None, :, :, None], out))[0, :, :, 0]
    np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{n} -> {out}")


def test_average_pool_excludes_padding():
  x = np.random.default_rng(0).uniform(0, 1, (1, 4, 5, 2)).astype(np.float32)
  got = np.asarray(inception.avg_pool_exclude_pad(jnp.asarray(x)))
  for i in range(4):
    for j in range(5):
      window = x[0, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2]
      np.testing.assert_allclose(got[0, i, j], window.mean(axis=(0, 1)), rtol=1e-6)


def test_features_from_a_weights_file(weights):
  params = inception.load(weights)
  images = np.random.default_rng(1).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
  feats = np.asarray(inception.pool_features(params, images))
  assert feats.shape == (2, inception.FEATURES) and np.all(np.isfinite(feats))
  assert np.all(feats >= 0) and np.mean(feats > 0) > 0.2  # Means of ReLU outputs.
  assert not np.allclose(feats[0], feats[1])
  # The network sees 299 x 299: an image given at 299 already scores as its 32 px self.
  big = np.asarray(inception.resize(jnp.asarray(images[:1]), 299))
  np.testing.assert_allclose(inception.pool_features(params, big), feats[:1], rtol=1e-4,
                             atol=1e-5)


def test_weight_file_errors_name_the_tensor(tmp_path):
  tensors = random_tensors()
  del tensors["Mixed_6c.branch7x7dbl_3.bn.running_var"]
  from safetensors.numpy import save_file
  path = str(tmp_path / "bad.safetensors")
  save_file({k: v.astype(np.float32) for k, v in tensors.items()}, path)
  with pytest.raises(errors.DataError,
                     match=r"bad.safetensors: no tensor 'Mixed_6c.branch7x7dbl_3.bn.running_var'"):
    inception.load(path)
  tensors = random_tensors()
  tensors["Mixed_7b.branch3x3_2a.conv.weight"] = np.zeros((384, 384, 3, 1), np.float32)
  save_file({k: np.asarray(v, np.float32) for k, v in tensors.items()}, path)
  with pytest.raises(errors.DataError, match=r"Mixed_7b.branch3x3_2a.conv.weight has shape "
                                             r"\(384, 384, 3, 1\).*\(384, 384, 1, 3\)"):
    inception.load(path)
  with pytest.raises(ValueError, match="Inception tensors missing"):
    inception.save({}, path)


def test_eval_fid_with_inception_features(weights, tmp_path, capsys):
  rng = np.random.default_rng(2)
  sets = {}
  for name, hue in (("a", 0), ("b", 1)):
    d = tmp_path / name
    d.mkdir()
    for i in range(6):
      pixels = rng.integers(0, 80, (24, 24, 3), dtype=np.uint8)
      pixels[..., hue] += 150
      Image.fromarray(pixels).save(d / f"{i}.png")
    sets[name] = str(d)
  assert fid.main(["--real", sets["a"], "--fake", sets["a"], "--features",
                   f"inception:{weights}", "--kid-subsets", "5"]) == 0
  same = json.loads(capsys.readouterr().out)
  assert fid.main(["--real", sets["a"], "--fake", sets["b"], "--features",
                   f"inception:{weights}", "--kid-subsets", "5"]) == 0
  other = json.loads(capsys.readouterr().out)
  assert same["num_real"] == other["num_fake"] == 6
  assert abs(same["fid"]) < 1e-3 * other["fid"], (same, other)
  assert other["kid"] > same["kid"]
  with pytest.raises(errors.ConfigError, match="inception:WEIGHTS"):
    fid.features(sets["a"], "pixels")
