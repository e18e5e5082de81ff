"""upgen's metrics against the reference packages on shared weights: SSIM against
scikit-image, LPIPS against the `lpips` package (random VGG16 features, the package's own
linear heads), the FID Inception-v3 against pytorch-fid's network (random weights). These packages (and torch) are test-only: CI installs requirements-ref-lock.txt
in a step of its own after the main suite and runs this file with UPGEN_REQUIRE_REFERENCE=1;
elsewhere the tests skip when they are missing."""
import importlib.util
import os

import numpy as np
import pytest
from scipy import ndimage

from upgen.models import image_metrics as im

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


def _fid_inception_without_download():
  """pytorch-fid's fid_inception_v3() without its weight download: torchvision's Inception3
  with pytorch-fid's FID blocks, random weights (He-scaled, so that the features depend on
  the input all the way up), batch norms with nontrivial statistics."""
  import torch
  from pytorch_fid import inception as pfi
  torch.manual_seed(0)
  net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
  net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
  net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
  net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
  net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
  net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
  net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
  net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
  net.Mixed_7b = pfi.FIDInceptionE_1(1280)
  net.Mixed_7c = pfi.FIDInceptionE_2(2048)
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, torch.nn.Conv2d):
        torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.uniform_(-0.1, 0.1)
        module.running_var.uniform_(0.8, 1.25)
        module.weight.uniform_(0.8, 1.2)
        module.bias.uniform_(-0.1, 0.1)
  return net


def test_inception_equals_pytorch_fid(tmp_path, monkeypatch):
  """pytorch-fid's InceptionV3 feature extractor (resize, scaling, blocks, pool) and
  upgen/evaluators/inception.py on the same random weights, through scripts/convert_inception.py."""
  import torch
  from pytorch_fid import inception as pfi
  spec = importlib.util.spec_from_file_location(
      "convert_inception", os.path.join(ROOT, "scripts", "convert_inception.py"))
  convert = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(convert)
  net = _fid_inception_without_download()
  torch.save(net.state_dict(), str(tmp_path / "pt_inception.pth"))
  out = str(tmp_path / "pt_inception.safetensors")
  assert convert.main(["--from", str(tmp_path / "pt_inception.pth"), "--out", out]) == 0
  monkeypatch.setattr(pfi, "fid_inception_v3", lambda: net)
  model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()

  from upgen.evaluators import inception
  params = inception.load(out)
  for size in (32, 320):  # Upsampled and downsampled to 299.
    x = np.random.default_rng(size).uniform(0, 1, (2, size, size, 3)).astype(np.float32)
    with torch.no_grad():
      want = model(torch.from_numpy(x).permute(0, 3, 1, 2))[0].reshape(2, -1).numpy()
    got = np.asarray(inception.pool_features(params, x))
    assert want.shape == got.shape == (2, 2048)
    # The two images' features differ 1000 times more than the tolerance allows: the check
    # sees the input (a random network that forgot it would pass any implementation).
    assert np.abs(want[0] - want[1]).max() > 0.01
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"{size} px")
