"""A small, fast run of experiments/falloff.py's measurements and page."""
import importlib.util
import os

import numpy as np
import pytest

from helpers import quiet
from sparsefan import builders, datasets
from sparsefan.train import TrainConfig, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def falloff():
    spec = importlib.util.spec_from_file_location(
        "falloff_experiment", os.path.join(ROOT, "experiments", "falloff.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_measurements_and_page(falloff, tmp_path):
    x, y, xt, yt = datasets.load_embedded()
    net = builders.dense_mlp(hidden=(16,), seed=0)
    train(net, x[:1000], y[:1000].astype(np.int64), TrainConfig(epochs=1, augment="zoom,mosaic"),
          progress=False, log=quiet)
    args = falloff.main.__globals__["argparse"].Namespace(robust_n=6, fraction=0.5,
                                                           doc=str(tmp_path / "falloff.md"))
    r = falloff.measure(net, xt[:40], yt[:40], args)
    flat = xt[:40].reshape(40, -1).astype(np.float32) / 255
    assert r["test_accuracy"] == float((net.predict(flat) == yt[:40]).mean())
    one = next(c for c in r["falloff"] if c["scale"] == 1.0)
    p = net.predict_proba(flat)
    assert one["true"] == pytest.approx(p[np.arange(40), yt[:40]].mean())
    assert [m["n"] for m in r["mosaic"]] == list(falloff.GRIDS)
    for c in r["falloff"] + r["mosaic"]:
        assert all(0 <= v <= 1 for k, v in c.items() if k not in ("scale", "n"))
    assert r["robustness"]["violations"] == 0 and r["robustness"]["n"] == 6
    pytest.importorskip("matplotlib")  # the page's plots
    falloff.write_doc({"dense_mlp": {**r, "train_seconds": 1.0}}, args)
    text = (tmp_path / "falloff.md").read_text()
    assert "| dense_mlp |" in text and "falloff/falloff.png" in text
    assert (tmp_path / "falloff" / "falloff.png").stat().st_size > 0
    assert (tmp_path / "falloff" / "mosaic.png").stat().st_size > 0
