"""builders.build: one name per option over every builder (the CLI and the estimator use it)."""
import numpy as np
import pytest

from sparsefan import builders
from sparsefan.estimator import FanInClassifier


def same(a, b):
    return (a.name == b.name and a.aggregate == b.aggregate and len(a.layers) == len(b.layers)
            and all(x.connectivity == y.connectivity and np.array_equal(x.weight, y.weight)
                    and x.activation == y.activation for x, y in zip(a.layers, b.layers)))


@pytest.mark.parametrize("arch,kw,direct", [
    ("direct", dict(fan_in=5, hidden=(4,), n_units=8),
     lambda: builders.direct((6, 6), 3, n_units=8, fan_in=5, hidden=(4,))),
    ("hierarchy", dict(fan_in=3, hidden=(2, 4), n_units=9, head_hidden=(3,)),
     lambda: builders.hierarchy((6, 6), 3, n_units=9, fan_in=3, channels=(2, 4),
                                head_hidden=(3,))),
    ("partition_ensemble", dict(fan_in=4, hidden=(3,)),
     lambda: builders.partition_ensemble((6, 6), 3, part_size=4, hidden=(3,))),
    ("dense_mlp", dict(hidden=(8,), activation="maxmin", fan_in=99, aggregate="vote"),
     lambda: builders.dense_mlp((6, 6), 3, hidden=(8,), activation="maxmin")),
])
def test_build_maps_one_name_per_option(arch, kw, direct):
    assert same(builders.build(arch, (6, 6), 3, **kw), direct())


def test_build_defaults_are_the_builders_own():
    for arch, make in builders.BUILDERS.items():
        assert same(builders.build(arch, (6, 6), 3), make((6, 6), 3))
    with pytest.raises(ValueError, match="architecture must be one of"):
        builders.build("cnn", (6, 6), 3)


def test_the_estimator_trains_certified_maxmin_networks():
    rng = np.random.default_rng(0)
    X = rng.random((200, 36), dtype=np.float32)
    y = (X[:, :18].sum(axis=1) > 9).astype(int)
    clf = FanInClassifier(fan_in=6, n_units=12, hidden=(4,), activation="maxmin",
                          l2_epsilon=0.3, epochs=3).fit(X, y)
    assert clf.network_.layers[0].activation == "maxmin"
    assert "train_certified" in clf.history_[-1]
    assert FanInClassifier(l0_radius=2, epochs=1, fan_in=6, n_units=12).fit(X, y).history_
