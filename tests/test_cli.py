import subprocess
import sys

import numpy as np
import pytest

from sparsefan import builders, cli, io


def run(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("cmd", [[], ["train"], ["eval"], ["info"], ["demo"]])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(cmd + ["--help"])
    assert e.value.code == 0
    assert "usage: sparsefan" in capsys.readouterr().out


def test_module_entry_point(tmp_path):
    # run outside the source tree, so the installed package is the one imported
    r = subprocess.run([sys.executable, "-m", "sparsefan", "--help"], capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 0 and "train" in r.stdout and "demo" in r.stdout


def test_train_info_eval_on_embedded(tmp_path, capsys):
    out = tmp_path / "m.npz"
    code, text, _ = run(["train", "--data", "embedded", "--arch", "direct", "--units", "196",
                         "--fan-in", "16", "--hidden", "4", "--epochs", "1", "--lr", "3e-2",
                         "--quiet", "--out", str(out)], capsys)
    assert code == 0 and "test accuracy" in text and out.exists()
    net = io.load_model(out)
    assert net.n_units == 196 and net.metadata["dataset"] == "embedded"
    assert net.metadata["test_accuracy"] > 0.5
    code, text, _ = run(["info", str(out)], capsys)
    assert code == 0 and "196 output units" in text and "test_accuracy" in text
    code, text, _ = run(["eval", str(out), "--data", "embedded"], capsys)
    assert code == 0 and "test accuracy" in text


def test_certified_training_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "cert.npz"
    code, text, _ = run(["train", "--data", "embedded", "--arch", "direct", "--units", "196",
                         "--fan-in", "16", "--hidden", "8", "--epochs", "3", "--lr", "1e-2",
                         "--l2-epsilon", "0.5", "--epsilon-ramp", "0.5", "--quiet",
                         "--out", str(out)], capsys)
    assert code == 0 and "certified L2 accuracy at eps 0.5" in text
    meta = io.load_model(out).metadata
    assert meta["config"]["l2_epsilon"] == 0.5
    assert 0.0 < meta["test_certified_l2"]["accuracy"] <= meta["test_accuracy"]
    assert "cert@0.50" in text


def test_certified_l0_training_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "cert0.npz"
    code, text, _ = run(["train", "--data", "embedded", "--arch", "direct", "--units", "196",
                         "--fan-in", "16", "--hidden", "8", "--epochs", "2", "--lr", "1e-2",
                         "--l0-radius", "3", "--quiet", "--out", str(out)], capsys)
    assert code == 0 and "certified L0 accuracy at 3 pixels" in text
    meta = io.load_model(out).metadata
    assert meta["config"]["l0_radius"] == 3
    assert 0.0 < meta["test_certified_l0"]["accuracy"] <= meta["test_accuracy"]


def test_errors_are_messages_not_tracebacks(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"nope")
    code, _, err = run(["info", str(bad)], capsys)
    assert code == 2 and "not a sparsefan file" in err
    code, _, err = run(["eval", str(tmp_path / "missing.npz"), "--data", "embedded"], capsys)
    assert code == 2 and "error" in err


def test_demo_runs_briefly(capsys):
    code, text, _ = run(["demo", "--epochs", "1", "--quiet"], capsys)
    assert code == 0
    assert "test accuracy" in text and "single example" in text and "receptive field" in text
    assert "with a certificate (predict_certified)" in text


def test_robustness_report(tmp_path, capsys):
    model = tmp_path / "m.npz"
    net = builders.direct((28, 28), 10, n_units=98, fan_in=9, hidden=(4,), seed=0)
    io.save_model(net, model)
    out = tmp_path / "report"
    code, text, _ = run(["robustness", str(model), "--data", "embedded", "--n", "12",
                         "--ddn-steps", "5", "--rs-queries", "3", "--out", str(out)], capsys)
    assert code == 0  # no attack beat a certificate
    report = (out / "report.md").read_text()
    assert "| m | mean_logits |" in report
    import json

    res = json.loads((out / "results.json").read_text())
    assert res[0]["n"] == 12 and res[0]["violations"] == 0
    assert set(res[0]["certified_l0"]) >= {"0", "4", "8", "12"}
    assert "| m | mean_logits | accuracy | n/a |" in report


def test_robustness_report_of_a_certified_model(tmp_path, capsys):
    """A certified-trained model: the report names its training radius and time, draws the
    trade-off plot, and re-checks every certificate against the attacks (exit 0: sound)."""
    pytest.importorskip("matplotlib")
    from sparsefan import datasets
    from sparsefan.train import TrainConfig, train

    x, y, _, _ = datasets.load_embedded()
    net = builders.direct((28, 28), 10, n_units=98, fan_in=16, hidden=(8,), seed=0)
    r = train(net, x[:2000], y[:2000].astype(np.int64),
              TrainConfig(epochs=2, lr=1e-2, l2_epsilon=0.5), progress=False, log=lambda _: None)
    model = tmp_path / "cert.npz"
    io.save_model(net, model, metadata={"train_seconds": r.seconds, "config": {"l2_epsilon": 0.5}})
    out = tmp_path / "report"
    code, _, _ = run(["robustness", str(model), "--data", "embedded", "--n", "20",
                      "--ddn-steps", "20", "--rs-queries", "3", "--out", str(out)], capsys)
    assert code == 0
    report = (out / "report.md").read_text()
    assert "| cert | mean_logits | L2 eps 0.5 |" in report
    assert (out / "tradeoff_l2.png").exists() and "tradeoff_l2.png" in report
    again = tmp_path / "again"
    code, _, _ = run(["robustness", str(model), "--data", "embedded", "--n", "5",
                      "--ddn-steps", "5", "--rs-queries", "2", "--out", str(again),
                      "--include", str(out / "results.json")], capsys)
    assert code == 0 and (again / "report.md").read_text().count("| cert | mean_logits |") == 2
    merged = tmp_path / "merged"
    code, _, _ = run(["robustness", "--include", str(out / "results.json"), "--include",
                      str(again / "results.json"), "--out", str(merged)], capsys)
    assert code == 0 and (merged / "report.md").read_text().count("| cert | mean_logits |") == 3
    code, _, err = run(["robustness", "--out", str(merged)], capsys)
    assert code == 2 and "give model files" in err


@pytest.mark.parametrize("bad,match", [
    (["--fan-in", "0"], "--fan-in: must be >= 1"), (["--hidden", ","], "--hidden: expected"),
    (["--epochs", "-1"], "--epochs: must be >= 1"), (["--batch-size", "0"], "--batch-size"),
    (["--threads", "0"], "--threads: 0 is not a thread count"), (["--units", "x"], "--units"),
    (["--l0-radius", "-2"], "--l0-radius"),
])
def test_bad_train_arguments_are_usage_errors(bad, match, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--data", "embedded", *bad, "--out", str(tmp_path / "m.npz")])
    assert e.value.code == 2 and match in capsys.readouterr().err


@pytest.mark.parametrize("bad,match", [
    (["--lr", "-1"], "lr must be positive"), (["--weight-decay", "nan"], "weight_decay"),
    (["--l0-radius", "3", "--l2-epsilon", "1"], "set one of them"),
    (["--validation", "1.5"], "validation"),
])
def test_bad_train_settings_are_one_line_before_any_work(bad, match, tmp_path, capsys):
    code, text, err = run(["train", "--data", "embedded", *bad, "--quiet",
                           "--out", str(tmp_path / "m.npz")], capsys)
    assert code == 2 and match in err and "Traceback" not in err
    assert "output units" not in text  # refused before the network was built


def test_out_paths_are_checked_before_training(tmp_path, capsys):
    code, text, err = run(["train", "--data", "embedded", "--epochs", "1", "--quiet",
                           "--out", str(tmp_path / "missing" / "m.npz")], capsys)
    assert code == 2 and "does not exist" in err and "output units" not in text
    code, _, err = run(["train", "--data", "embedded", "--epochs", "1", "--quiet",
                        "--out", str(tmp_path)], capsys)
    assert code == 2 and "is a directory" in err
