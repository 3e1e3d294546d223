"""scripts/make_digits.py's split: the digits folder behind BENCHMARKS.md's far-from-ImageNet rows
must be the same folder for the same arguments, balanced, with no image in both parts."""

from __future__ import annotations

import numpy as np
import pytest

from scripts.make_digits import split

# load_digits' class sizes (1,797 images): scikit-learn is not installed here, the split needs only the labels.
TARGETS = np.repeat(np.arange(10), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])


def test_split_is_stratified_disjoint_and_seeded():
    train, val = split(TARGETS, 600, 300, seed=0)
    assert np.bincount(TARGETS[train]).tolist() == [60] * 10
    assert np.bincount(TARGETS[val]).tolist() == [30] * 10
    assert not set(train) & set(val)
    assert split(TARGETS, 600, 300, seed=0) == (train, val)
    assert split(TARGETS, 600, 300, seed=1) != (train, val)


def test_asking_for_more_than_a_class_holds_names_the_class():
    with pytest.raises(SystemExit, match="class 8 has 174 images"):
        split(TARGETS, 1760, 0, seed=0)  # 176 per class: only digit 8 has fewer
