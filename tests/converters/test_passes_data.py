"""Calibration rows: the first N, or N spread evenly over a file grouped by user."""
from __future__ import annotations

import numpy as np
import pytest

from edgerec.converters.errors import ConverterConfigError
from edgerec.converters.passes.data import load_rows


def test_spread_rows_reach_every_user_of_a_grouped_file_and_first_rows_do_not(tmp_path):
    groups = np.repeat(np.arange(50), 101)                       # 50 users x (1 positive + 100 negatives)
    labels = (np.arange(len(groups)) % 101 == 0).astype(np.float32)
    np.savez(tmp_path / "rows.npz", x=np.arange(len(groups), dtype=np.float32), groups=groups, labels=labels)
    first = load_rows(tmp_path / "rows.npz", ["x", "groups"], limit=505, need_labels=True)
    spread = load_rows(tmp_path / "rows.npz", ["x", "groups"], limit=505, need_labels=True, spread=True)
    assert len(np.unique(first["groups"])) == 5 and len(np.unique(spread["groups"])) == 50
    assert len(spread["x"]) == 505 and np.all(np.diff(spread["x"]) > 0)        # in file order, no repeats
    assert spread["x"][0] == 0 and spread["x"][-1] == len(groups) - 1
    whole = load_rows(tmp_path / "rows.npz", ["x"], limit=10 ** 6, spread=True)
    assert len(whole["x"]) == len(groups)                        # a limit above the count: every row once
    with pytest.raises(ConverterConfigError, match="missing"):
        load_rows(tmp_path / "rows.npz", ["y"], limit=10, spread=True)
