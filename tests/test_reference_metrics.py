"""upgen's metrics against the reference packages on shared weights: SSIM against
scikit-image, LPIPS against the `lpips` package (random VGG16 features, the package's own
linear heads). These packages (and torch) are test-only: CI installs requirements-ref-lock.txt
in a step of its own after the main suite and runs this file with UPGEN_REQUIRE_REFERENCE=1;
elsewhere the tests skip when they are missing."""
import importlib.util
import os

import numpy as np
import pytest
from scipy import ndimage

from upgen import image_metrics as im

_MISSING = [m for m in ("torch", "torchvision", "lpips", "skimage")
            if importlib.util.find_spec(m) is None]
if _MISSING and os.environ.get("UPGEN_REQUIRE_REFERENCE") != "1":
  pytest.skip(f"reference packages not installed: {_MISSING} (requirements-ref-lock.txt)",
              allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pair(seed, b, h, w, noise):
  rng = np.random.default_rng(seed)
  x = np.clip(ndimage.gaussian_filter(rng.uniform(0, 255, (b, h, w, 3)), (0, 2, 2, 0)) * 1.5
              - 60, 0, 255)
  y = np.clip(x + rng.normal(0, noise, x.shape), 0, 255)
  return x.round().astype(np.uint8), y.round().astype(np.uint8)


@pytest.mark.parametrize("h,w,noise", [(24, 24, 4.0), (32, 40, 25.0), (11, 16, 60.0)])
def test_ssim_equals_scikit_image(h, w, noise):
  from skimage.metrics import structural_similarity
  x, y = _pair(0, 3, h, w, noise)
  want = [structural_similarity(a, b, gaussian_weights=True, use_sample_covariance=False,
                                data_range=255, channel_axis=-1) for a, b in zip(x, y)]
  np.testing.assert_allclose(im.ssim(x, y, 255.0), want, atol=1e-5)


def test_lpips_equals_the_package(tmp_path):
  import torch
  import lpips
  spec = importlib.util.spec_from_file_location(
      "convert_lpips", os.path.join(ROOT, "scripts", "convert_lpips.py"))
  convert = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(convert)
  torch.manual_seed(0)
  # Random VGG16 features (no download), the package's bundled v0.1 linear heads.
  model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
  vgg = {}
  for s, convs in im.LPIPS_SLICES:
    for i in convs:
      layer = getattr(model.net, f"slice{s}")._modules[str(i)]
      vgg[f"features.{i}.weight"], vgg[f"features.{i}.bias"] = layer.weight, layer.bias
  torch.save(vgg, str(tmp_path / "vgg16.pth"))
  out = str(tmp_path / "lpips_vgg.safetensors")
  assert convert.main(["--vgg", str(tmp_path / "vgg16.pth"), "--out", out]) == 0
  params = im.load_lpips(out)

  x, y = _pair(1, 4, 32, 32, 30.0)
  unit = lambda a: a.astype(np.float32) / 127.5 - 1.0
  with torch.no_grad():
    want = model(torch.from_numpy(unit(x)).permute(0, 3, 1, 2),
                 torch.from_numpy(unit(y)).permute(0, 3, 1, 2)).reshape(-1).numpy()
  got = np.asarray(im.lpips(params, unit(x), unit(y)))
  assert np.all(want > 0)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  # And through the uint8 path `upgen eval recon` uses.
  np.testing.assert_allclose(im.reconstruction_metrics(x, y, params)["lpips"], want.mean(),
                             rtol=1e-4)
