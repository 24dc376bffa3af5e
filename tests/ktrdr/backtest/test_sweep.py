"""A sweep's surface: each variant's neighbourhood (itself and its adjacent grid points) tells a
plateau from a lone spike, and a heatmap shows the metric over two parameters, by value."""

from __future__ import annotations

import pytest

from ktrdr.backtest.sweep import combinations, heatmap, neighbourhood

GRID = {"fast": [1, 2, 3], "slow": [10, 20, 30]}


def test_a_lone_spike_scores_low_and_a_plateau_high() -> None:
    spike = {i: 1.0 for i in range(9)} | {4: 10.0}  # the centre alone is good
    plateau = {i: 5.0 if combo["fast"] >= 2 and combo["slow"] >= 20 else 1.0
               for i, combo in enumerate(combinations(GRID))}
    around_spike, around_plateau = neighbourhood(spike, GRID), neighbourhood(plateau, GRID)
    assert around_spike[4] == (pytest.approx(18 / 9), 9)  # the spike and its eight neighbours
    assert around_spike[0] == (pytest.approx(13 / 4), 4)  # a corner has three neighbours
    best_of_plateau = max(i for i, v in plateau.items() if v == 5.0)  # fast=3, slow=30
    assert around_plateau[best_of_plateau] == (pytest.approx(20 / 4), 4)
    assert around_plateau[best_of_plateau][0] > around_spike[4][0]


def test_variants_without_a_value_are_left_out_of_their_neighbours_means() -> None:
    values = {0: 2.0, 1: None, 3: float("nan"), 4: 4.0}
    # Only 0 and 4 have values, and they are adjacent: every one of the four sees those two.
    assert neighbourhood(values, GRID) == {i: (pytest.approx(3.0), 2) for i in (0, 1, 3, 4)}


def test_a_heatmap_takes_the_best_over_the_other_parameters() -> None:
    grid = {"fast": [1, 2], "slow": [10, 20], "stop": [0.1, 0.2]}
    ranking = [{"parameters": c, "metrics": {"sharpe_ratio": c["fast"] * 10 + c["slow"] + c["stop"]}}
               for c in combinations(grid)]
    xs, ys, cells = heatmap(ranking, grid, "sharpe_ratio", x="fast", y="slow")
    assert (xs, ys) == ([1, 2], [10, 20])
    assert cells == [[pytest.approx(20.2), pytest.approx(30.2)], [pytest.approx(30.2), pytest.approx(40.2)]]
    _, _, lowest = heatmap(ranking, grid, "sharpe_ratio", x="fast", y="slow", descending=False)
    assert lowest[0][0] == pytest.approx(20.1)
    with pytest.raises(ValueError, match="'medium' is not a parameter"):
        heatmap(ranking, grid, "sharpe_ratio", x="medium", y="slow")
