"""The zoom and mosaic transforms, their soft labels, and training with them."""
import logging

import numpy as np
import pytest

from helpers import check_resume_is_bit_identical, quiet
from sparsefan import augment as A
from sparsefan import builders, datasets
from sparsefan.network import Network
from sparsefan.train import TrainConfig, evaluate, train

TRANSFORMS = [A.zoom_out, A.zoom_in, A.mosaic, A.composite]


@pytest.fixture(scope="module")
def digits():
    x, y, _, _ = datasets.load_embedded()
    return x[:64].astype(np.float32) / 255, y[:64].astype(np.int64)


def supersampled(image, scale, centre_out, centre_in, k=24):
    """The area resampling written out by brute force: each output pixel is the mean of the
    input, read as constant squares, at k x k points of the square it sees."""
    H, W = image.shape
    out = np.zeros((H, W))
    offsets = (np.arange(k) + 0.5) / k
    for i in range(H):
        for j in range(W):
            u = centre_in[0] + (i + offsets - centre_out[0]) / scale
            v = centre_in[1] + (j + offsets - centre_out[1]) / scale
            uu, vv = np.meshgrid(u, v, indexing="ij")
            inside = (uu >= 0) & (uu < H) & (vv >= 0) & (vv < W)
            vals = np.zeros_like(uu)
            vals[inside] = image[uu[inside].astype(int), vv[inside].astype(int)]
            out[i, j] = vals.mean()
    return out


@pytest.mark.parametrize("scale,centre_out,centre_in", [
    (0.5, (14, 14), (14, 14)), (0.3, (9.3, 20.1), (14, 14)), (2.0, (14, 14), (10.5, 17.25)),
    (1 / 3, (14 / 3, 14), (14, 14)), (1.0, (14, 14), (14, 14)),
])
def test_resampling_is_the_area_mean(digits, scale, centre_out, centre_in):
    img = digits[0][3]
    got = A.resample(img[None], scale, centre_out=centre_out, centre_in=centre_in)[0]
    # k = 24 samples per axis integrate exactly for these scales up to the sampling of 1/k
    np.testing.assert_allclose(got, supersampled(img, scale, centre_out, centre_in), atol=0.04)


def test_down_scaling_conserves_ink(digits):
    x, _ = digits
    for s in (0.9, 0.5, 0.25):
        out = A.resample(x, s)
        np.testing.assert_allclose(out.sum(axis=(1, 2)), s * s * x.sum(axis=(1, 2)), rtol=1e-5)


@pytest.mark.parametrize("op", TRANSFORMS)
def test_shapes_range_and_determinism(digits, op):
    x, y = digits
    a, ta = op(x, y, rng=np.random.default_rng(5))
    b, tb = op(x, y, rng=np.random.default_rng(5))
    c, _ = op(x, y, rng=np.random.default_rng(6))
    assert a.shape == x.shape and a.dtype == np.float32
    assert ta.shape == (len(x), 10) and ta.dtype == np.float64
    assert a.min() >= 0 and a.max() <= 1
    np.testing.assert_allclose(ta.sum(axis=1), 1, atol=1e-12)
    assert (ta >= 0).all()
    assert np.array_equal(a, b) and np.array_equal(ta, tb)
    assert not np.array_equal(a, c)
    assert np.array_equal(op(x, y, rng=7)[0], op(x, y, rng=7)[0])  # an int seed


@pytest.mark.parametrize("op", [A.zoom_out, A.zoom_in])
def test_zoom_factor_one_is_the_identity_with_the_hard_label(digits, op):
    x, y = digits
    out, t = op(x, y, scale=1.0, rng=0)
    assert np.array_equal(out, x)
    assert np.array_equal(t, np.eye(10)[y])


def test_zoom_targets_follow_the_falloff(digits):
    x, y = digits
    f = A.DEFAULT_FALLOFF
    for s in (0.1, 0.2, 0.3, 0.5, 0.8):
        _, t = A.zoom_out(x, y, scale=s, rng=0)
        w = float(f(s))
        assert t[np.arange(len(y)), y] == pytest.approx(w + (1 - w) / 10)
    for s in (1.2, 2.0, 3.0, 5.0):
        _, t = A.zoom_in(x, y, scale=s, rng=0)
        w = float(f(s))
        assert t[np.arange(len(y)), y] == pytest.approx(w + (1 - w) / 10)


def test_falloff_is_smooth_and_monotone():
    f = A.Falloff()
    s = np.linspace(0.05, 6, 4000)
    w = f(s)
    assert w.min() == 0 and w.max() == 1
    assert (w[(s >= f.out_full) & (s <= f.in_full)] == 1).all()
    assert (w[s <= f.out_zero] == 0).all() and (w[s >= f.in_zero] == 0).all()
    small, large = s < 1, s > 1
    assert (np.diff(w[small]) >= 0).all() and (np.diff(w[large]) <= 0).all()
    assert np.abs(np.diff(w)).max() < 0.01  # no cliff: a step of 0.0015 in s moves w little
    with pytest.raises(ValueError, match="out_zero < out_full"):
        A.Falloff(out_zero=0.6)
    with pytest.raises(ValueError, match="scales"):
        f(np.array([0.0]))


@pytest.mark.parametrize("grid", [2, 3, 4, 5, 6, None])
def test_a_mosaic_is_never_more_confident_than_a_tile(digits, grid):
    x, y = digits
    out, t = A.mosaic(x, y, grid=grid, rng=1)
    tile = float(A.DEFAULT_FALLOFF(1.0 / (grid or 2)))  # a tile's own confidence at 1/n
    assert (t.max(axis=1) <= tile + (1 - tile) / 10 + 1e-12).all()
    if grid:
        # the target is the mean of the n * n tiles' zoom-out targets
        rng = np.random.default_rng(1)
        rng.choice(A.MOSAIC_SIZES, 0)  # mosaic draws nothing for its grid when grid is given
        pick = rng.integers(0, len(x), (len(x), grid * grid))
        pick[:, 0] = np.arange(len(x))
        w = A.DEFAULT_FALLOFF(1.0 / grid)
        want = (w * np.eye(10)[y[pick]] + (1 - w) / 10).mean(axis=1)
        np.testing.assert_allclose(t, want, atol=1e-12)


def test_mosaic_tiles_are_the_zoomed_out_images(digits):
    x, y = digits
    out, _ = A.mosaic(x[:4], y[:4], grid=3, rng=2, pool=(x[:4], y[:4]))
    pick = np.random.default_rng(2).integers(0, 4, (4, 9))
    pick[:, 0] = np.arange(4)
    for i in range(4):
        want = np.zeros((28, 28))
        for a in range(3):
            for b in range(3):
                cell = ((a + 0.5) * 28 / 3, (b + 0.5) * 28 / 3)
                want += A.resample(x[pick[i, 3 * a + b]][None], 1 / 3, centre_out=cell)[0]
        np.testing.assert_allclose(out[i], np.clip(want, 0, 1), atol=1e-6)


def test_composite_keeps_the_foreground_and_its_label(digits):
    x, y = digits
    out, t = A.composite(x, y, rng=3)
    assert (out >= x).all()  # the foreground's ink is all there
    assert np.array_equal(t, np.eye(10)[y])
    assert (out.sum(axis=(1, 2)) > x.sum(axis=(1, 2))).mean() > 0.9  # a background is added


def test_soft_input_labels_are_mixed_toward_uniform(digits):
    x, y = digits
    soft = np.full((len(y), 10), 0.05)
    soft[np.arange(len(y)), y] = 0.55
    _, t = A.zoom_out(x, soft, scale=0.3, rng=0)
    w = float(A.DEFAULT_FALLOFF(0.3))
    np.testing.assert_allclose(t, w * soft + (1 - w) / 10)


@pytest.mark.parametrize("call,match", [
    (lambda x, y: A.zoom_out(x[..., 0], y), "images must be"),
    (lambda x, y: A.zoom_out(x, y[:3]), "labels must be"),
    (lambda x, y: A.zoom_out(x, y + 10), r"labels must lie in \[0, 10\)"),
    (lambda x, y: A.zoom_out(x, y, scale=1.5), "scale must lie in"),
    (lambda x, y: A.zoom_in(x, y, scale=0.5), "scale must lie in"),
    (lambda x, y: A.mosaic(x, y, grid=0), "grid must be an int"),
    (lambda x, y: A.Augmenter(("blur",), (28, 28)), "augment must name"),
    (lambda x, y: A.Augmenter(("zoom",), (28, 28), fraction=0), "augment_fraction"),
])
def test_bad_arguments(digits, call, match):
    with pytest.raises(ValueError, match=match):
        call(*digits)


def test_augmenter_replaces_a_fraction_of_the_batch(digits):
    x, y = digits
    aug = A.Augmenter(("zoom", "mosaic"), (28, 28), fraction=0.5)
    flat = x.reshape(len(x), -1)
    out, t = aug(flat, y, np.random.default_rng(0))
    changed = (out != flat).any(axis=1)
    assert 0.25 < changed.mean() < 0.75
    assert np.array_equal(t[~changed], np.eye(10)[y[~changed]])
    again = aug(flat, y, np.random.default_rng(0))
    assert np.array_equal(out, again[0]) and np.array_equal(t, again[1])


# -- training with soft targets and augmentation ------------------------------------------------

def small_direct():
    return builders.direct(n_units=49, fan_in=9, hidden=(4,), seed=0)


def test_training_with_augmentation_learns_and_resumes_bit_identically(digits, tmp_path):
    x, y = digits
    config = TrainConfig(epochs=2, batch_size=16, augment="zoom,mosaic", seed=3)
    assert config.augment == ("zoom", "mosaic")
    check_resume_is_bit_identical(small_direct, x, y, config, tmp_path / "ck.npz")
    # the augmentation is used: other seeds of it give other weights
    a, b = small_direct(), small_direct()
    train(a, x, y, config, progress=False, log=quiet)
    train(b, x, y, TrainConfig(epochs=2, batch_size=16, seed=3), progress=False, log=quiet)
    assert not np.array_equal(a.layers[0].weight, b.layers[0].weight)


def test_training_on_soft_targets():
    x, y, _, _ = datasets.load_embedded()
    x, y = x[:1000], y[:1000].astype(np.int64)
    soft = np.full((len(y), 10), 0.02)
    soft[np.arange(len(y)), y] = 0.82
    config = TrainConfig(epochs=3, batch_size=32, lr=3e-3)
    net, hard = builders.dense_mlp(hidden=(32,), seed=0), builders.dense_mlp(hidden=(32,), seed=0)
    train(net, x, soft, config, progress=False, log=quiet)
    train(hard, x, y, config, progress=False, log=quiet)
    flat = x.reshape(len(x), -1).astype(np.float32) / 255
    acc_soft, acc_hard = evaluate(net, flat, y)[0], evaluate(hard, flat, y)[0]
    assert acc_soft > 0.8 and abs(acc_soft - acc_hard) < 0.05
    assert evaluate(net, flat, soft)[0] == acc_soft  # soft rows count by their top class
    # the soft model is less confident: its targets never ask for more than 0.82
    assert net.predict_proba(flat).max(axis=1).mean() < hard.predict_proba(flat).max(axis=1).mean()


def test_augmentation_needs_images(digits):
    x, y = digits
    net = Network(small_direct().layers, 10, input_shape=(784,))  # flat: no image shape
    with pytest.raises(ValueError, match="is not \\(height, width\\)"):
        train(net, x.reshape(len(x), -1), y, TrainConfig(epochs=1, augment="zoom"),
              progress=False, log=quiet)
    # 3-D training arrays give the shape
    train(net, x, y, TrainConfig(epochs=1, augment="zoom"), progress=False, log=quiet)
    with pytest.raises(ValueError, match="certified training"):
        TrainConfig(augment="zoom", l2_epsilon=0.5)


# -- iterables of batches and logging -----------------------------------------------------------

def batches_of(x, y, size=16):
    return [(x[s:s + size], y[s:s + size]) for s in range(0, len(x), size)]


def test_training_from_an_iterable_of_batches(digits):
    x, y = digits
    config = TrainConfig(epochs=2, batch_size=16, seed=1)
    listed = small_direct()
    train(listed, batches_of(x, y), config=config, progress=False, log=quiet)
    again = small_direct()
    train(again, batches_of(x, y), config=config, progress=False, log=quiet)
    assert np.array_equal(listed.layers[0].weight, again.layers[0].weight)
    assert not np.array_equal(listed.layers[0].weight, small_direct().layers[0].weight)

    class Loader:  # what a torch DataLoader offers: iter() per epoch and len()
        def __iter__(self):
            return iter(batches_of(x, y))

        def __len__(self):
            return len(batches_of(x, y))

    loaded = small_direct()
    train(loaded, Loader(), config=config, progress=False, log=quiet)
    assert np.array_equal(loaded.layers[0].weight, listed.layers[0].weight)

    gen = small_direct()  # a generator: one epoch, a constant rate (no len for a schedule)
    train(gen, (b for b in batches_of(x, y)), config=TrainConfig(epochs=1, schedule="constant"),
          progress=False, log=quiet)
    assert not np.array_equal(gen.layers[0].weight, small_direct().layers[0].weight)


@pytest.mark.parametrize("data,config,match", [
    (lambda x, y: iter(batches_of(x, y)), TrainConfig(epochs=2, schedule="constant"),
     "iterator, which can be read once"),
    (lambda x, y: (b for b in batches_of(x, y)), TrainConfig(epochs=1),
     "no len\\(\\), which schedule='cosine'"),
    (lambda x, y: batches_of(x, y), TrainConfig(epochs=1, validation=0.2), "pass x_val"),
    (lambda x, y: [(x[:4], y[:3])], TrainConfig(epochs=1), "y batch 0"),
    (lambda x, y: [(x[:4, :5], y[:4])], TrainConfig(epochs=1), "x batch 0"),
    (lambda x, y: [x[:4]], TrainConfig(epochs=1), "batch 0 of x must be an \\(x, y\\) pair"),
    (lambda x, y: [], TrainConfig(epochs=1), "no batches"),
])
def test_bad_iterables(digits, data, config, match):
    with pytest.raises(ValueError, match=match):
        train(small_direct(), data(*digits), config=config, progress=False, log=quiet)


def test_epochs_are_logged(digits, caplog):
    x, y = digits
    with caplog.at_level(logging.INFO, logger="sparsefan.train"):
        train(small_direct(), x, y, TrainConfig(epochs=2, batch_size=32), progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "sparsefan.train"]
    assert len(lines) == 2 and lines[0].startswith("epoch   1") and "loss" in lines[1]
