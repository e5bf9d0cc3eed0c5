"""Label spaces, sample encodings and group-wise splits."""

from __future__ import annotations

import numpy as np
import pytest

from medvit.shared.classify.labels import LabelSpace, Sample, group_split
from medvit.shared.errors import ConfigError, DataError


def test_num_outputs_and_columns() -> None:
    assert LabelSpace("multilabel", ("a", "b", "c")).num_outputs() == 3
    assert LabelSpace.binary().num_outputs() == 1
    assert LabelSpace.binary().prob_columns == ("prob_positive",)
    graded = LabelSpace("graded", tuple("01234"))
    assert graded.num_outputs() == 5 and graded.target_width == 1
    assert LabelSpace.from_dict(graded.to_dict()) == graded


@pytest.mark.parametrize(
    ("kind", "classes"), [("binary", ("a",)), ("multiclass", ("a",)), ("multilabel", ("a", "a")), ("soft", ("a",))]
)
def test_invalid_label_spaces(kind: str, classes: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError):
        LabelSpace(kind, classes)  # type: ignore[arg-type]


def test_check_target() -> None:
    ml = LabelSpace("multilabel", ("a", "b"))
    out = ml.check_target(np.array([1, np.nan]))
    assert out is not None and out[0] == 1 and np.isnan(out[1])
    with pytest.raises(DataError):
        ml.check_target(np.array([0.5, 1]))
    mc = LabelSpace("multiclass", ("x", "y", "z"))
    with pytest.raises(DataError):
        mc.check_target(np.array([3.0]))
    with pytest.raises(DataError):
        mc.check_target(np.array([0.0, 1.0]))


def _samples() -> list[Sample]:
    # 6 patients with 1..3 images each (12 images)
    out = []
    for p, n in enumerate([1, 2, 3, 1, 2, 3]):
        out += [Sample(f"p{p}_{k}.png", np.zeros(1), group=f"p{p}") for k in range(n)]
    return out


def test_group_split_keeps_patients_together_and_is_seeded() -> None:
    samples = _samples()
    train, val = group_split(samples, 0.25, seed=3)
    assert len(train) + len(val) == len(samples) and len(val) >= 3
    assert not {s.group for s in train} & {s.group for s in val}
    # order of the input does not change the split; the seed does (over a few seeds)
    assert group_split(samples[::-1], 0.25, seed=3)[1] == val[::-1]
    splits = {tuple(s.key for s in group_split(samples, 0.25, seed=k)[1]) for k in range(8)}
    assert len(splits) > 1


def test_group_split_edge_cases() -> None:
    samples = _samples()
    assert group_split(samples, 0.0, 0) == (samples, [])
    train, val = group_split(samples, 0.99, 0)
    assert train and val  # train keeps one group
    with pytest.raises(ConfigError):
        group_split(samples, 1.0, 0)
    with pytest.raises(DataError):
        group_split([Sample("a.png", group="g"), Sample("b.png", group="g")], 0.5, 0)
    # ungrouped samples are their own group
    _, val = group_split([Sample(f"{i}.png") for i in range(10)], 0.3, 0)
    assert len(val) == 3
