"""bench/diversity.py's helpers on constructed inputs (the benchmark itself is run by hand)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# The bench scripts import their siblings (machine, shift, ehr_synthetic) as top-level modules.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import diversity  # noqa: E402

import rank1  # noqa: E402


def _grid(**changes):
    grid = {name: [value] for name, value in diversity.REFERENCE.items()}
    grid.update(changes)
    return grid


def test_one_at_a_time_variants_change_one_setting_each_and_are_named_by_it():
    todo = diversity.variants(_grid(prior_stddev=[1.0, 0.3, 0.1], num_eval_samples=[1, 4]), False)
    assert [v.name for v in todo] == [
        "baseline",
        "prior_stddev=0.3",
        "prior_stddev=0.1",
        "num_eval_samples=4",
    ]
    assert todo[3].values["prior_stddev"] == 1.0


def test_the_grid_holds_every_combination_and_names_departures_from_the_benchmark():
    todo = diversity.variants(_grid(prior_stddev=[1.0, 0.3], eval_every=[0]), True)
    assert [v.name for v in todo] == ["eval_every=0", "prior_stddev=0.3, eval_every=0"]


def test_epistemic_share_is_zero_for_agreeing_paths_and_grows_with_disagreement():
    agree = np.tile(np.array([[-2.0, 0.5, 1.0]]), (4, 1))
    assert diversity.epistemic_share(agree) == pytest.approx(0.0, abs=1e-12)
    apart = np.array([[-3.0, -3.0], [3.0, 3.0]])
    # mixture 0.5 (ln 2 nats) from paths at 0.05 and 0.95 (0.20 nats each): share 0.72
    assert diversity.epistemic_share(apart) == pytest.approx(0.72, abs=0.01)


def test_factor_statistics_read_the_posterior_scale_and_the_member_spread():
    torch.manual_seed(0)
    layer = rank1.Rank1Linear(3, 2, rank1=rank1.Rank1Config(ensemble_size=4, random_sign_init=0.0))
    scale, spread = diversity.factor_statistics(layer)
    assert scale == pytest.approx(0.0316, abs=0.01)  # dropout_rate 1e-3
    assert spread == 0.0  # every mean starts at exactly 1
    assert all(math.isnan(v) for v in diversity.factor_statistics(torch.nn.Linear(3, 2)))
