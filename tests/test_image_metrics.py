"""Tests for upgen/models/image_metrics.py: PSNR, SSIM (scikit-image's Gaussian variant), LPIPS-VGG
loading and forward, and `upgen eval recon` on a saved tokenizer run."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from upgen import errors
from upgen.evaluators import recon as recon_eval
from upgen.models import image_metrics as im


def _images(seed, b=3, size=24):
  rng = np.random.default_rng(seed)
  base = ndimage.gaussian_filter(rng.uniform(0, 255, (b, size, size, 3)), (0, 2, 2, 0))
  return np.clip(base * 1.5 - 60, 0, 255)


def test_psnr_closed_form():
  x = np.zeros((2, 4, 4, 3))
  y = x + np.array([5.0, 10.0])[:, None, None, None]
  np.testing.assert_allclose(im.psnr(x, y), 10 * np.log10(255.0 ** 2 / np.array([25.0, 100.0])),
                             rtol=1e-5)


def _ssim_reference(x, y, data_range):
  """SSIM computed the way scikit-image does (float64, scipy's Gaussian filter over the
  whole image with reflected borders, then the borders cropped), channel by channel."""
  out = []
  for a, b in zip(x, y):
    per_channel = []
    for c in range(a.shape[-1]):
      a_c, b_c = a[..., c].astype(np.float64), b[..., c].astype(np.float64)
      f = lambda z: ndimage.gaussian_filter(z, 1.5, truncate=3.5, mode="reflect")
      ux, uy = f(a_c), f(b_c)
      vx, vy, vxy = f(a_c * a_c) - ux * ux, f(b_c * b_c) - uy * uy, f(a_c * b_c) - ux * uy
      c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
      s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
      per_channel.append(s[5:-5, 5:-5].mean())
    out.append(np.mean(per_channel))
  return np.array(out)


def test_ssim_matches_the_reference_computation():
  x = _images(0)
  noise = np.random.default_rng(1).normal(0, [[[[5.0]]], [[[20.0]]], [[[60.0]]]], x.shape)
  y = np.clip(x + noise, 0, 255)
  got = np.asarray(im.ssim(x, y, 255.0))
  np.testing.assert_allclose(got, _ssim_reference(x, y, 255.0), atol=2e-6)
  assert got[0] > got[1] > got[2]  # More noise, less similar.
  np.testing.assert_allclose(im.ssim(x, x), 1.0, atol=1e-6)
  np.testing.assert_allclose(im.ssim(y, x), got, atol=1e-6)  # Symmetric.
  # [0, 1] images with data_range 1 score as their 255-scaled copies.
  np.testing.assert_allclose(im.ssim(x / 255, y / 255, 1.0), got, atol=2e-6)
  assert len(im.gaussian_taps()) == 11 and abs(im.gaussian_taps().sum() - 1) < 1e-12
  with pytest.raises(ValueError, match="at least 11 x 11"):
    im.ssim(x[:, :8, :8], y[:, :8, :8])


def _random_lpips(seed=0):
  rng = np.random.default_rng(seed)
  tensors = {k: rng.normal(0, 0.1, shape).astype(np.float32)
             for k, shape in im.lpips_keys().items()}
  tensors["scaling_layer.shift"] = np.array([-.030, -.088, -.188], np.float32).reshape(1, 3, 1, 1)
  tensors["scaling_layer.scale"] = np.array([.458, .448, .450], np.float32).reshape(1, 3, 1, 1)
  for k in tensors:
    if k.startswith("lin"):
      tensors[k] = np.abs(tensors[k])
  return tensors


def test_lpips_weights_round_trip_and_first_convolution(tmp_path):
  tensors = _random_lpips()
  path = str(tmp_path / "lpips.safetensors")
  im.save_lpips(tensors, path)
  params = im.load_lpips(path)
  assert len(params) == len(im.lpips_keys()) == 2 + 13 * 2 + 5
  # The first convolution in PyTorch's layout (out, in, kh, kw; cross-correlation, padding
  # 1), computed directly, equals the JAX one on the loaded HWIO kernel.
  x = np.random.default_rng(2).uniform(-1, 1, (1, 6, 6, 3)).astype(np.float32)
  w, b = tensors["net.slice1.0.weight"], tensors["net.slice1.0.bias"]
  padded = np.pad(x[0], ((1, 1), (1, 1), (0, 0)))
  want = np.array([np.sum(padded[2:5, 3:6, :].transpose(2, 0, 1) * w[o]) + b[o]
                   for o in range(w.shape[0])])
  got = np.asarray(im._conv(jnp.asarray(x), params["net.slice1.0.weight"],
                            params["net.slice1.0.bias"]))[0, 2, 3]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_lpips_distance_properties(tmp_path):
  path = str(tmp_path / "lpips.safetensors")
  im.save_lpips(_random_lpips(), path)
  params = im.load_lpips(path)
  x = _images(3, b=2, size=32) / 127.5 - 1
  y = _images(4, b=2, size=32) / 127.5 - 1
  d_xy = np.asarray(im.lpips(params, x, y))
  assert d_xy.shape == (2,) and np.all(d_xy > 0)
  np.testing.assert_allclose(im.lpips(params, y, x), d_xy, rtol=1e-5)
  np.testing.assert_allclose(im.lpips(params, x, x), 0.0, atol=1e-7)
  near = np.asarray(im.lpips(params, x, np.clip(x + 0.02, -1, 1)))
  assert np.all(near < d_xy)


def test_lpips_file_errors_name_the_file_and_tensor(tmp_path):
  from safetensors.numpy import save_file
  tensors = _random_lpips()
  path = str(tmp_path / "bad.safetensors")
  save_file({k: v for k, v in tensors.items() if k != "lin3.model.1.weight"}, path)
  with pytest.raises(errors.DataError, match=r"bad.safetensors: no tensor 'lin3.model.1.weight'"):
    im.load_lpips(path)
  tensors["net.slice2.5.weight"] = tensors["net.slice2.5.weight"][:, :32]
  save_file(tensors, path)
  with pytest.raises(errors.DataError, match=r"net.slice2.5.weight has shape \(128, 32, 3, 3\)"):
    im.load_lpips(path)
  (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
  with pytest.raises(errors.DataError, match="junk.safetensors: cannot read"):
    im.load_lpips(str(tmp_path / "junk.safetensors"))
  with pytest.raises(errors.NotFound, match="nope.safetensors: no such LPIPS weights file"):
    im.load_lpips(str(tmp_path / "nope.safetensors"))


def test_eval_recon_on_a_saved_tokenizer(tmp_path, capsys):
  from tests import test_vqgan
  from upgen.datasets import shapes
  from upgen.tokenizers import image
  from upgen.runtime import checkpoint, optimizer
  config = test_vqgan.small_config()
  setup, params = test_vqgan.init_params(config, seed=3)
  run = str(tmp_path / "vq")
  checkpoint.save_run_config(run, config, setup.spec)
  ckpt = checkpoint.Checkpointer(run, async_save=False)
  ckpt.save(1, {"step": jnp.int32(1), "params": params, "opt_state": optimizer.make_optimizer(
      config.optim, config.train.steps).init(params)})
  ckpt.close()
  data = str(tmp_path / "shapes")
  shapes.generate(data, image_size=16, num_train=4, num_val=12, num_test=4, seed=1)
  lpips_path = str(tmp_path / "lpips.safetensors")
  im.save_lpips(_random_lpips(), lpips_path)
  out_json = str(tmp_path / "recon.json")
  assert recon_eval.main(["--workdir", run, "--data", data, "--num", "10", "--lpips", lpips_path,
                  "--json", out_json]) == 0
  result = json.loads(open(out_json).read())
  assert json.loads(capsys.readouterr().out) == result
  assert result["num"] == 10 and result["data"] == os.path.join(data, "val")
  # The same numbers from the tokenizer's reconstructions directly.
  from upgen.data import sources
  tok = image.load(run)
  src = sources.ImageFolderSource(os.path.join(data, "val"), 16)
  images = np.stack([src[i]["image"] for i in range(10)])
  recon = np.asarray(tok.decode(tok.encode(images)))
  np.testing.assert_allclose(result["psnr"], np.mean(im.psnr(images, recon)), rtol=1e-5)
  np.testing.assert_allclose(result["ssim"], np.mean(im.ssim(images, recon)), rtol=1e-5)
  assert result["lpips"] > 0
  assert "not computed" in im.reconstruction_metrics(images, recon)["lpips"]
