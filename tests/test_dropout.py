"""Per-row dropout masks (models/dropout.py): the rate, the scaling, and a row's mask
independent of which other rows share its call (what keeps GradCache exact)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxembed.models.dropout import row_dropout, row_keep_mask


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_masks_drop_at_the_rate(rate):
    keep = np.asarray(row_keep_mask(jax.random.key(0), (64, 4, 97, 31), rate, None))
    assert keep.shape == (64, 4, 97, 31)
    # 770k draws: the binomial's standard deviation is under 0.0006.
    assert abs((1 - keep.mean()) - rate) < 0.003
    # Rows and positions differ: no mask is a copy of another.
    assert not np.array_equal(keep[0], keep[1]) and not np.array_equal(keep[0, 0], keep[0, 1])


def test_masks_are_independent_across_neighbours_rows_and_keys():
    """Pairs of draws that a weak generator would tie together (the two halves of one hashed
    word, neighbouring words, the same element of neighbouring rows, the next step's key)
    are kept together as often as independent draws: (1 - rate)^2."""
    rate, shape = 0.5, (64, 4, 96, 32)
    key = jax.random.key(7)
    keep = np.asarray(row_keep_mask(key, shape, rate, None)).astype(np.float64)
    later = np.asarray(row_keep_mask(jax.random.fold_in(key, 1), shape, rate, None))
    pairs = {
        "halves of a word": (keep[..., 0::2], keep[..., 1::2]),
        "neighbouring words": (keep[..., 0:-2:2], keep[..., 2::2]),
        "neighbouring rows": (keep[:-1], keep[1:]),
        "next key": (keep, later),
    }
    for name, (a, b) in pairs.items():
        # >= 196k pairs: the joint rate's standard deviation is under 0.001.
        assert abs(np.mean(a * b) - (1 - rate) ** 2) < 0.005, name


def test_a_rows_mask_depends_on_its_row_id_only():
    key = jax.random.key(3)
    rows = jnp.arange(10, 26, dtype=jnp.int32)
    whole = np.asarray(row_keep_mask(key, (16, 5, 7), 0.1, rows))
    part = np.asarray(row_keep_mask(key, (4, 5, 7), 0.1, rows[6:10]))
    np.testing.assert_array_equal(part, whole[6:10])


def test_kept_values_are_scaled_and_dropped_ones_zero():
    x = jnp.full((8, 128), 2.0)
    y = np.asarray(row_dropout(jax.random.key(1), x, 0.2, None))
    assert set(np.unique(y)) == {0.0, np.float32(2.0 / 0.8)}
