"""examples/torch_ddp.py: two processes on this machine train one fan-in network with torch
DistributedDataParallel (gloo); both ranks end with the same weights, changed by training, and
rank 0's model converts back to a sparsefan model file with those weights."""
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with the gloo backend is not available",
                allow_module_level=True)

import sparsefan as sf  # noqa: E402
from helpers import fresh_env  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ddp_two_processes_end_with_the_same_weights(tmp_path):
    out = tmp_path / "run"
    env = fresh_env(**{var: None for var in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                                             "MASTER_PORT")})  # spawn locally, not under torchrun
    cmd = [sys.executable, os.path.join(ROOT, "examples", "torch_ddp.py"), "--world-size", "2",
           "--epochs", "2", "--units", "98", "--fan-in", "16", "--hidden", "8",
           "--train-size", "512", "--threads", "1", "--out", str(out)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "weights identical on all 2 ranks: True" in run.stdout

    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    initial = torch.load(out / "initial.pt", weights_only=True)
    assert set(ranks[0]) == set(ranks[1]) == set(initial)
    for name in initial:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        assert not torch.equal(ranks[0][name], initial[name]), name

    net = sf.load_model(out / "model.npz")
    for i, layer in enumerate(net.layers):
        assert np.array_equal(layer.weight, ranks[0][f"layers.{i}.weight"].numpy())
        assert np.array_equal(layer.bias, ranks[0][f"layers.{i}.bias"].numpy())
