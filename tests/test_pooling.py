"""Pooling against direct numpy computations."""

import numpy as np
import pytest

from jaxembed.models.pooling import l2_normalize, pool


@pytest.fixture
def states():
    rng = np.random.default_rng(0)
    return rng.normal(size=(3, 6, 4)).astype(np.float32)


def test_mean_ignores_pads_whatever_they_hold(states):
    mask = np.array([[1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], np.int32)
    poisoned = np.where(mask[..., None] == 1, states, 1e6).astype(np.float32)
    out = np.asarray(pool(poisoned, mask, "mean"))
    for b in range(3):
        np.testing.assert_allclose(out[b], states[b][mask[b] == 1].mean(0), rtol=1e-6)


def test_mean_with_instruction_excluded(states):
    mask = np.array([[1, 1, 1, 1, 0, 0]] * 3, np.int32)
    pool_mask = np.array([[0, 0, 1, 1, 1, 1]] * 3, np.int32)  # first two tokens: instruction
    out = np.asarray(pool(states, mask, "mean", pool_mask=pool_mask))
    np.testing.assert_allclose(out, states[:, 2:4].mean(1), rtol=1e-6)


def test_last_token_under_both_paddings(states):
    right = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], np.int32)
    left = np.array([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]], np.int32)
    np.testing.assert_array_equal(
        np.asarray(pool(states, right, "last")), states[[0, 1, 2], [2, 5, 0]]
    )
    np.testing.assert_array_equal(np.asarray(pool(states, left, "last")), states[:, 5])


def test_first_token_under_both_paddings(states):
    left = np.array([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]], np.int32)
    np.testing.assert_array_equal(
        np.asarray(pool(states, left, "first")), states[[0, 1, 2], [3, 0, 5]]
    )


def test_l2_normalize(states):
    flat = states[:, 0]
    np.testing.assert_allclose(
        np.asarray(l2_normalize(flat)),
        flat / np.linalg.norm(flat, axis=1, keepdims=True),
        rtol=1e-6,
    )


def test_unknown_mode_is_an_error(states):
    with pytest.raises(ValueError, match="pooling mode 'max'"):
        pool(states, np.ones((3, 6), np.int32), "max")
