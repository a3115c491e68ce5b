"""Selection rules on hand-built score tables whose right answers are worked out by hand."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from jaxembed.errors import UserInputError
from jaxembed.mining.methods import MiningConfig, select_negatives

# One query; candidates best first. Columns 0 and 3 are its positives (0.90 and 0.75), so
# pos, the weakest positive, is 0.75.
SCORES = np.array([[0.90, 0.85, 0.80, 0.75, 0.70, 0.60, 0.50, 0.40]])
IS_POS = np.array([[True, False, False, True, False, False, False, False]])
VALID = np.ones_like(IS_POS)
POS = np.array([0.75])


def chosen(config, scores=SCORES, is_pos=IS_POS, valid=VALID, pos=POS, seed=0):
    sel = select_negatives(scores, valid, is_pos, pos, config, np.random.default_rng(seed))
    return [[c for c in row if c >= 0] for row in sel.columns.tolist()], sel


@pytest.mark.parametrize(
    "config, expected",
    [
        # naive: the top non-positives.
        (MiningConfig("naive", None, num_negatives=3), [1, 2, 4]),
        # shift 2: skip 0.85 and 0.80, then the top.
        (MiningConfig("shift", None, num_negatives=2, shift=2), [4, 5]),
        # abs t = 0.7: keep < 0.7 (0.70 itself is out).
        (MiningConfig("abs", 0.7, num_negatives=2), [5, 6]),
        # margin m = 0.1: keep < 0.75 - 0.1 = 0.65.
        (MiningConfig("margin", 0.1, num_negatives=3), [5, 6, 7]),
        # perc p = 0.95: keep < 0.95 * 0.75 = 0.7125.
        (MiningConfig("perc", 0.95, num_negatives=2), [4, 5]),
        # perc p = 0.9: keep < 0.675.
        (MiningConfig("perc", 0.9, num_negatives=2), [5, 6]),
        # A rule and a shift: survivors of perc 0.95 are 4..7; skip one.
        (MiningConfig("perc", 0.95, num_negatives=2, shift=1), [5, 6]),
    ],
)
def test_each_method_picks_the_known_columns(config, expected):
    got, _ = chosen(config)
    assert got == [expected]


def test_counts_by_rule_and_short_queries():
    # perc 0.95 leaves columns 4..7; range_max 3 makes column 7 ineligible.
    got, sel = chosen(MiningConfig("perc", 0.95, num_negatives=2, range_max=3))
    assert got == [[4, 5]] and sel.count.tolist() == [2]
    assert sel.removed == {
        "positive": 2,
        "perc": 2,  # 0.85 and 0.80
        "shift": 0,
        "beyond_range_max": 1,  # 0.40
        "not_chosen": 1,  # 0.60
    }
    # abs 0.55 leaves 0.50 and 0.40: two of the four asked for, padded with -1.
    got, sel = chosen(MiningConfig("abs", 0.55, num_negatives=4, range_max=4))
    assert got == [[6, 7]] and sel.count.tolist() == [2]
    assert sel.columns.tolist() == [[6, 7, -1, -1]]


def test_padding_and_table_narrower_than_n():
    # A 3-document corpus: the search pads with invalid columns.
    scores = np.array([[0.5, 0.2, -np.inf]])
    valid = np.array([[True, True, False]])
    got, sel = chosen(
        MiningConfig("naive", None, num_negatives=4),
        scores,
        np.zeros_like(valid),
        valid,
        np.array([0.9]),
    )
    assert got == [[0, 1]] and sel.columns.shape == (1, 4)


def test_threshold_ties_are_dropped_and_negative_pos_is_sign_safe():
    # Exactly-representable ties: 0.5 == 1.0 * 0.5, 0.5 == 1.0 - 0.5.
    scores = np.array([[0.5, 0.25]])
    none = np.zeros((1, 2), bool)
    valid = np.ones((1, 2), bool)
    for cfg in (
        MiningConfig("abs", 0.5, num_negatives=1),
        MiningConfig("margin", 0.5, num_negatives=1),
        MiningConfig("perc", 0.5, num_negatives=1),
    ):
        assert chosen(cfg, scores, none, valid, np.array([1.0]))[0] == [[1]]
    # pos = -0.2, p = 0.5: the bar is -0.2 - 0.1 = -0.3, not -0.2 * 0.5 = -0.1 (which would
    # keep -0.15, a candidate scoring above the positive).
    scores = np.array([[-0.15, -0.25, -0.35]])
    valid = np.ones((1, 3), bool)
    cfg = MiningConfig("perc", 0.5, num_negatives=3)
    assert chosen(cfg, scores, np.zeros_like(valid), valid, np.array([-0.2]))[0] == [[2]]


def _draw(config, scores, rows=40000):
    table = np.repeat(scores[None, :], rows, axis=0)
    valid = np.ones_like(table, bool)
    sel = select_negatives(
        table, valid, np.zeros_like(valid), np.full(rows, 1.0), config, np.random.default_rng(7)
    )
    return sel.columns


def _close(freq, prob, rows):
    # 5 standard errors of a binomial proportion.
    return abs(freq - prob) <= 5 * np.sqrt(prob * (1 - prob) / rows) + 1e-12


def test_uniform_sampling_is_uniform_over_eligible_survivors():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    # perc 0.95 with pos 1.0 leaves every column; shift 1 skips 0.9; range_max 5 drops 0.4.
    cfg = MiningConfig("perc", 0.95, num_negatives=2, shift=1, range_max=5, sampling="uniform")
    cols = _draw(cfg, scores)
    assert (np.diff(cols, axis=1) > 0).all()  # returned best first
    pairs = {p: 0 for p in itertools.combinations(range(1, 5), 2)}
    for row in map(tuple, cols.tolist()):
        pairs[row] += 1
    for count in pairs.values():
        assert _close(count / len(cols), 1 / 6, len(cols))


def test_softmax_sampling_matches_plackett_luce_probabilities():
    scores = np.array([0.9, 0.7, 0.6, 0.3])
    t = 0.2
    cfg = MiningConfig(
        "naive", None, num_negatives=2, range_max=4, sampling="softmax", temperature=t
    )
    cols = _draw(cfg, scores)
    w = np.exp(scores / t)
    p = w / w.sum()
    for i, j in itertools.combinations(range(4), 2):
        # Drawing without replacement: i then j, or j then i.
        prob = p[i] * p[j] / (1 - p[i]) + p[j] * p[i] / (1 - p[j])
        freq = np.mean((cols[:, 0] == i) & (cols[:, 1] == j))
        assert _close(freq, prob, len(cols)), (i, j, freq, prob)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(method="abs", margin=None), "needs a finite margin"),
        (dict(method="naive", margin=0.5), "takes no margin"),
        (dict(method="perc", margin=1.5), "0 < margin <= 1"),
        (dict(method="shift", margin=None, shift=0), "shift >= 1"),
        (dict(method="naive", margin=None, num_negatives=0), "num_negatives"),
        (dict(method="naive", margin=None, num_negatives=4, range_max=3), "range_max=3"),
        (dict(method="bogus", margin=None), "not one of"),
        (dict(method="naive", margin=None, sampling="softmax", temperature=0), "temperature"),
    ],
)
def test_bad_settings_are_named(kwargs, needle):
    with pytest.raises(UserInputError, match=needle):
        MiningConfig(**kwargs)
