"""FID and KID against their closed forms and a direct computation."""
import numpy as np
import pytest

from upgen.evaluators import fid


def _psd(rng, d):
  a = rng.normal(size=(d, d))
  return a @ a.T / d + 0.1 * np.eye(d)


def _reference_frechet(mu1, s1, mu2, s2):
  """Tr((S1 S2)^(1/2)) = Tr((S1^(1/2) S2 S1^(1/2))^(1/2)), by eigendecompositions."""
  w, v = np.linalg.eigh(s1)
  root1 = v @ np.diag(np.sqrt(w)) @ v.T
  inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
               - 2 * np.sum(np.sqrt(np.clip(inner, 0, None))))


def test_frechet_distance_is_the_gaussians_closed_form():
  rng = np.random.default_rng(0)
  # One dimension: (m1 - m2)^2 + (sd1 - sd2)^2.
  assert fid.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]),
                              np.array([[9.0]])) == pytest.approx(4.0 + 1.0)
  for d in (2, 8, 32):
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _psd(rng, d), _psd(rng, d)
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        _reference_frechet(mu1, s1, mu2, s2), rel=1e-6)
    assert fid.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6)
  # From samples: the estimate approaches the closed form.
  d = 4
  mu1, mu2, s1, s2 = rng.normal(size=d), rng.normal(size=d), _psd(rng, d), _psd(rng, d)
  x = rng.multivariate_normal(mu1, s1, 200_000)
  y = rng.multivariate_normal(mu2, s2, 200_000)
  assert fid.fid_from_features(x, y) == pytest.approx(_reference_frechet(mu1, s1, mu2, s2),
                                                      rel=0.02)
  # A singular product (rank-deficient features) still gives a finite, real value.
  low = rng.normal(size=(50, 2)) @ rng.normal(size=(2, 6))
  assert np.isfinite(fid.fid_from_features(low, low + 0.1))


def test_kid_is_the_unbiased_polynomial_mmd():
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 3)) + 0.5
  k = lambda a, b: (a @ b / 3 + 1) ** 3
  m = 5
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m ** 2
  mean, std = fid.kid(x, y, num_subsets=3, subset_size=5)  # Whole sets: permutations only.
  assert mean == pytest.approx(xx + yy - 2 * xy) and std == pytest.approx(0.0, abs=1e-12)
  same = fid.kid(rng.normal(size=(400, 3)), rng.normal(size=(400, 3)), 20, 200)[0]
  shifted = fid.kid(rng.normal(size=(400, 3)), rng.normal(size=(400, 3)) + 1.0, 20, 200)[0]
  assert abs(same) < shifted / 10
