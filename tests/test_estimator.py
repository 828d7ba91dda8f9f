
import numpy as np
import pytest

pytest.importorskip("sklearn")

from sparsefan import datasets  # noqa: E402
from sparsefan.estimator import FanInClassifier  # noqa: E402
from sparsefan.train import TrainConfig, as_float_inputs  # noqa: E402
from helpers import run_fresh  # noqa: E402


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
    from sklearn.exceptions import NotFittedError

    clf = small()
    params = clf.get_params()
    assert params["fan_in"] == 16 and params["architecture"] == "direct"
    assert clf.set_params(fan_in=9) is clf and clf.fan_in == 9
    with pytest.raises(ValueError, match="Invalid parameter 'bogus'"):
        clf.set_params(bogus=1)
    with pytest.raises(NotFittedError, match="not fitted"):
        clf.predict(np.zeros((1, 784), np.float32))
    assert "fan_in=9" in repr(clf) and "architecture" not in repr(clf)  # changed ones only


def test_training_defaults_are_the_trainers():
    defaults = TrainConfig()
    clf = FanInClassifier()
    for name in ("epochs", "batch_size", "lr", "optimizer", "weight_decay", "validation",
                 "patience", "seed", "l2_epsilon", "l0_radius"):
        assert getattr(clf, name) == getattr(defaults, name), name


def test_uint8_images_are_scaled_and_image_shapes_kept(data):
    x, y, xt, yt = data
    images = np.round(x[:300] * 255).astype(np.uint8)
    scaled = as_float_inputs(images)  # the package's one rule: x / 255 in float32
    assert scaled.dtype == np.float32 and np.allclose(scaled, images / 255)
    as_float = small(epochs=1).fit(scaled, y[:300])
    as_uint8 = small(epochs=1).fit(images, y[:300])
    assert np.array_equal(as_uint8.predict_proba(images), as_float.predict_proba(scaled))
    as_images = small(epochs=1).fit(images.reshape(300, 28, 28), y[:300])
    assert as_images.n_features_in_ == 784 and as_images.network_.input_shape == (28, 28)
    assert np.array_equal(as_images.predict(images.reshape(300, 28, 28)),
                          as_uint8.predict(images))
    with pytest.raises(ValueError, match=r"input_shape \(27, 28\) does not hold"):
        small(epochs=1, input_shape=(27, 28)).fit(images, y[:300])


def test_sparsefan_imports_without_sklearn():
    """``import sparsefan`` never imports scikit-learn, and works where it is missing; only
    the estimator module needs it, and says so."""
    code = """if True:
        import sys
        sys.modules["sklearn"] = None  # any import of sklearn now raises ImportError
        import sparsefan, sparsefan.cli, sparsefan.train
        assert not [m for m in sys.modules if m.startswith("sklearn.")], "sklearn imported"
        try:
            import sparsefan.estimator
        except ImportError as exc:
            print(exc)
    """
    out = run_fresh(["-c", code])
    assert out.returncode == 0, out.stderr
    assert "sparsefan.estimator needs scikit-learn" in out.stdout
    out = run_fresh(["-c", "import sys, sparsefan; print('sklearn' in sys.modules)"])
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


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
