"""upgen/models/positions.py: the fixed sinusoidal position tables."""
import numpy as np
import pytest

from upgen.models import positions


def test_position_tables():
  t1 = positions.sinusoidal_1d(5, 8)
  assert t1.shape == (5, 8) and np.allclose(t1[0], [0] * 4 + [1] * 4)
  t2 = positions.sinusoidal_2d(2, 3, 8)
  assert t2.shape == (6, 8)
  np.testing.assert_allclose(t2[4, :4], positions.sinusoidal_1d(2, 4)[1])  # Row 1.
  np.testing.assert_allclose(t2[4, 4:], positions.sinusoidal_1d(3, 4)[1])  # Column 1.
  with pytest.raises(ValueError, match="even width"):
    positions.sinusoidal_1d(3, 5)
  with pytest.raises(ValueError, match="divisible by 4"):
    positions.sinusoidal_2d(2, 2, 6)
