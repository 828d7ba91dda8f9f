import numpy as np
import pytest

from sparsefan import datasets
from sparsefan.estimator import FanInClassifier


@pytest.fixture(scope="module")
def data():
    x, y, xt, yt = datasets.load_embedded()
    # string labels: the estimator maps any labels to classes_
    names = np.array(list("abcdefghij"))
    return (x[:1500].reshape(1500, -1).astype(np.float32) / 255, names[y[:1500]],
            xt[:500].reshape(500, -1).astype(np.float32) / 255, names[yt[:500]])


def small(**kw):
    args = dict(n_units=196, fan_in=16, hidden=(8,), epochs=3, lr=3e-2, batch_size=64)
    args.update(kw)
    return FanInClassifier(**args)


def test_fit_predict_score(data):
    x, y, xt, yt = data
    clf = small().fit(x, y)
    assert list(clf.classes_) == list("abcdefghij")
    pred = clf.predict(xt)
    assert pred.dtype == yt.dtype and set(pred) <= set(clf.classes_)
    assert clf.score(xt, yt) > 0.75
    p = clf.predict_proba(xt[:5])
    assert p.shape == (5, 10) and np.allclose(p.sum(1), 1)


def test_params_protocol():
    clf = small()
    params = clf.get_params()
    assert params["fan_in"] == 16 and params["architecture"] == "direct"
    assert clf.set_params(fan_in=9) is clf and clf.fan_in == 9
    with pytest.raises(ValueError, match="invalid parameter 'bogus'"):
        clf.set_params(bogus=1)
    with pytest.raises(ValueError, match="not fitted"):
        clf.predict(np.zeros((1, 784), np.float32))


def test_sklearn_clone_and_pipeline(data):
    sklearn = pytest.importorskip("sklearn")
    from sklearn.base import clone
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    x, y, xt, yt = data
    clf = small(epochs=2)
    c2 = clone(clf)
    assert c2 is not clf and c2.get_params() == clf.get_params()
    pipe = make_pipeline(FunctionTransformer(lambda a: np.clip(a, 0, 1)), c2)
    pipe.fit(x, y)
    assert pipe.score(xt, yt) > 0.6
    assert sklearn.base.is_classifier(clf)


@pytest.mark.parametrize("arch", ["hierarchy", "partition_ensemble", "dense_mlp"])
def test_other_architectures(arch, data):
    x, y, xt, yt = data
    kw = dict(architecture=arch, epochs=2)
    if arch == "hierarchy":
        kw.update(n_units=196, fan_in=9, hidden=(4, 4))
    elif arch == "partition_ensemble":
        kw.update(fan_in=28, hidden=(8,), n_units=None, lr=1e-2)
    else:
        kw.update(fan_in=None, n_units=None, hidden=(32,), lr=1e-3)
    clf = small(**kw).fit(x, y)
    assert clf.score(xt, yt) > 0.3


def test_non_square_features_fall_back_to_random_wiring(rng):
    x = rng.random((200, 30), dtype=np.float32)
    y = (x.sum(axis=1) > 15).astype(int)  # every unit sees part of the evidence
    clf = FanInClassifier(n_units=30, fan_in=10, hidden=(4,), epochs=20, lr=3e-2).fit(x, y)
    assert clf.network_.input_shape == (30,)
    assert clf.score(x, y) > 0.7
