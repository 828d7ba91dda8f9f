import argparse
import importlib.metadata
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import sparsefan
from sparsefan import builders, cli, io, report
from sparsefan.train import TrainConfig

COMMANDS = ["train", "eval", "info", "robustness", "demo", "export"]
SOURCE = os.path.dirname(os.path.dirname(os.path.abspath(cli.__file__)))  # the tested package's


def run(argv, capsys):
    """(exit status, stdout, stderr) of the command; usage errors' SystemExit included."""
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_error(err, command, code):
    """One error line, ``sparsefan CMD: error: ...``; a usage error (2) adds argparse's usage
    lines before it, a runtime error (1) prints nothing else."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"sparsefan {command}: error: "), err
    if code == 1:
        assert lines == errors, err
    else:
        assert lines[-1] == errors[0] and lines[0].startswith(f"usage: sparsefan {command}"), err


def subcommands():
    parser = cli.make_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


@pytest.mark.parametrize("cmd", [[]] + [[c] for c in COMMANDS])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(cmd + ["--help"])
    assert e.value.code == 0
    assert "usage: sparsefan" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    try:
        version = importlib.metadata.version("sparsefan")
    except importlib.metadata.PackageNotFoundError:
        version = sparsefan.__version__
    assert capsys.readouterr().out == f"sparsefan {version}\n"


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_every_default_as_parsed(name):
    """Each option with a value by default shows that very value: none is written by hand."""
    p = subcommands()[name]
    squeeze = lambda text: "".join(text.split())  # help wraps lines, at hyphens too
    text = squeeze(p.format_help())
    shown = 0
    for action in p._actions:
        d = action.default
        if not action.option_strings or d is None or isinstance(d, bool) or d == "==SUPPRESS==":
            continue
        assert squeeze(f"{action.help} (default: {d})") in text, action.dest
        shown += 1
    assert shown or name == "info"


def test_defaults_with_a_meaning_of_their_own():
    parser = cli.make_parser()
    args = parser.parse_args(["export", "m.npz", "out"])
    assert args.data is None  # the accuracy report: embedded, for a 784-input model
    assert "default: embedded, for a model of 784 inputs" in " ".join(
        subcommands()["export"].format_help().split())
    assert parser.parse_args(["train", "--out", "m.npz"]).data == "mnist"


def test_training_defaults_are_train_configs():
    args = cli.make_parser().parse_args(["train", "--out", "m.npz"])
    config = TrainConfig()
    for name in ("epochs", "batch_size", "optimizer", "lr", "schedule", "weight_decay",
                 "aggregate_loss", "unit_loss", "validation", "patience", "seed", "l2_epsilon",
                 "epsilon_ramp", "power_iterations", "l0_radius", "augment_fraction"):
        assert getattr(args, name) == getattr(config, name), name
    assert f"learning rate (default: {config.lr})" in " ".join(
        subcommands()["train"].format_help().split())


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


def test_training_with_augmentation_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "aug.npz"
    code, text, _ = run(["train", "--data", "embedded", "--limit", "2000", "--arch", "direct",
                         "--units", "49", "--fan-in", "9", "--hidden", "4", "--epochs", "1",
                         "--augment", "zoom,mosaic", "--augment-fraction", "0.3", "--quiet",
                         "--out", str(out)], capsys)
    assert code == 0 and "epoch   1" in text
    config = io.load_model(out).metadata["config"]
    assert config["augment"] == ["zoom", "mosaic"] and config["augment_fraction"] == 0.3


def test_errors_are_messages_not_tracebacks(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"nope")
    code, _, err = run(["info", str(bad)], capsys)
    assert code == 1 and "not a sparsefan file" in err
    assert_error(err, "info", 1)
    code, _, err = run(["eval", str(tmp_path / "missing.npz"), "--data", "embedded"], capsys)
    assert code == 1 and "missing.npz" in err
    assert_error(err, "eval", 1)


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
    assert_error(err, "robustness", 2)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m.npz"
    io.save_model(builders.direct((28, 28), 10, n_units=20, fan_in=4, hidden=(2,), seed=0), path)
    return str(path)


# (arguments, exit status, part of the error line); TMP, MODEL and FILE are substituted
BAD_ARGUMENTS = [
    (["train", "--epochs", "-1"], 2, "argument --epochs: must be >= 1, got -1"),
    (["train", "--epochs", "x"], 2, "argument --epochs: expected an int, got 'x'"),
    (["train", "--lr", "-1"], 2, "argument --lr: must be a finite number > 0, got -1"),
    (["train", "--lr", "0"], 2, "argument --lr: must be a finite number > 0"),
    (["train", "--lr", "inf"], 2, "argument --lr: must be a finite number"),
    (["train", "--weight-decay", "nan"], 2, "argument --weight-decay: must be a finite number"),
    (["train", "--validation", "1.5"], 2, "argument --validation: must be a finite number in "
                                          "[0, 1), got 1.5"),
    (["train", "--epsilon-ramp", "2"], 2, "argument --epsilon-ramp"),
    (["train", "--batch-size", "0"], 2, "argument --batch-size: must be >= 1, got 0"),
    (["train", "--fan-in", "0"], 2, "argument --fan-in: must be >= 1"),
    (["train", "--hidden", ","], 2, "argument --hidden: expected"),
    (["train", "--units", "x"], 2, "argument --units"),
    (["train", "--threads", "0"], 2, "argument --threads: 0 is not a thread count"),
    (["train", "--l0-radius", "-2"], 2, "argument --l0-radius"),
    (["train", "--augment", "zoom,blur"], 2, "argument --augment: expected distinct names of "
                                            "zoom, mosaic, got 'zoom,blur'"),
    (["train", "--augment", "zoom,zoom"], 2, "argument --augment: expected distinct names"),
    (["train", "--augment-fraction", "0"], 2, "argument --augment-fraction"),
    (["train", "--augment", "zoom", "--l0-radius", "3"], 2, "soft targets, which certified"),
    (["train", "--seed", "-1"], 2, "argument --seed: must be >= 0"),
    (["train", "--limit", "0"], 2, "argument --limit: must be >= 1"),
    (["train", "--data", "cifar"], 2, "argument --data: a data set is embedded, mnist, "
                                      "mnist:DIR, idx:DIR or npz:FILE; got 'cifar'"),
    (["train", "--data", "npz:"], 2, "argument --data: 'npz:': give the file after the colon"),
    (["train", "--arch", "cnn"], 2, "argument --arch: invalid choice"),
    (["train", "--l0-radius", "3", "--l2-epsilon", "1"], 2, "set one of them"),
    (["train", "--resume"], 2, "--resume needs --checkpoint"),
    (["train", "--patience", "3"], 2, "--patience stops on the validation accuracy"),
    (["train", "--data-dir", "TMP"], 2, "--data-dir is MNIST's directory; with --data embedded"),
    (["train", "--download"], 2, "--download fetches MNIST"),
    (["train", "--out", "TMP/missing/m.npz"], 1, "does not exist"),
    (["train", "--out", "/missing/dir/x.npz"], 1, "directory '/missing/dir' does not exist"),
    (["train", "--out", "TMP"], 1, "is a directory"),
    (["train", "--checkpoint", "TMP/no/c.ckpt"], 1, "--checkpoint"),
    (["train", "--data", "npz:TMP/absent.npz"], 1, "absent.npz: no such file"),
    (["train", "--data", "idx:TMP/absent"], 1, "absent: no such directory"),
    (["eval"], 2, "the following arguments are required: model"),
    (["eval", "MODEL", "--limit", "-1"], 2, "argument --limit"),
    (["eval", "TMP/absent.npz"], 1, "absent.npz"),
    (["eval", "FILE"], 1, "not a sparsefan file"),
    (["eval", "MODEL", "--data", "npz:FILE"], 1, "not a readable .npz file"),
    (["info", "TMP/absent.npz"], 1, "absent.npz"),
    (["robustness", "MODEL", "--n", "-5"], 2, "argument --n: must be >= 1, got -5"),
    (["robustness", "MODEL", "--n", "0"], 2, "argument --n"),
    (["robustness", "MODEL", "--ddn-steps", "0"], 2, "argument --ddn-steps"),
    (["robustness", "MODEL"], 2, "the following arguments are required: --out"),
    (["robustness", "--out", "TMP/r"], 2, "give model files"),
    (["robustness", "MODEL", "--out", "FILE"], 1, "is not a directory"),
    (["robustness", "MODEL", "--out", "FILE/r"], 1, "is not a directory"),
    (["robustness", "TMP/absent.npz", "--out", "TMP/r"], 1, "absent.npz"),
    (["robustness", "MODEL", "--include", "TMP/absent.json", "--out", "TMP/r"], 1,
     "absent.json"),
    (["robustness", "MODEL", "--include", "FILE", "--out", "TMP/r"], 1,
     "FILE: not a results.json"),
    (["demo", "--epochs", "0"], 2, "argument --epochs"),
    (["demo", "--threads", "0"], 2, "argument --threads"),
    (["demo", "--out", "/missing/dir/x.npz"], 1, "does not exist"),
    (["export", "MODEL", "TMP/o", "--percentile", "0"], 2, "argument --percentile"),
]


@pytest.mark.parametrize("argv,code,message", BAD_ARGUMENTS,
                         ids=[" ".join(a[0]) for a in BAD_ARGUMENTS])
def test_bad_arguments_fail_before_any_work(argv, code, message, tmp_path, capsys, model_file):
    """Usage errors exit 2 (argparse's usage and one error line), other errors exit 1 with one
    line; nothing is built, trained or written first."""
    (tmp_path / "FILE").write_text("x")
    for name, value in (("MODEL", model_file), ("FILE", str(tmp_path / "FILE")),
                        ("TMP", str(tmp_path))):
        argv = [a.replace(name, value) for a in argv]
    if argv[0] == "train":
        argv += ["--quiet"] + ([] if "--data" in argv else ["--data", "embedded"])
        argv += [] if "--out" in argv else ["--out", str(tmp_path / "m.npz")]
    before = sorted(os.listdir(tmp_path))
    got, out, err = run(argv, capsys)
    assert got == code, err
    assert message in err
    assert_error(err, argv[0], code)
    assert "output units" not in out and "test accuracy" not in out  # no network built
    assert sorted(os.listdir(tmp_path)) == before  # nothing written


def test_the_exit_status_of_the_real_command(tmp_path):
    """Through ``python -m sparsefan`` (what the console script runs): 1 for an error, 2 for a
    usage error, 0 for --version, each with no traceback."""
    def status(*argv):
        r = subprocess.run([sys.executable, "-m", "sparsefan", *argv], capture_output=True,
                           text=True, cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": SOURCE})
        assert "Traceback" not in r.stderr
        return r.returncode, r.stderr
    code, err = status("info", "absent.npz")
    assert code == 1 and err.count("\n") == 1 and err.startswith("sparsefan info: error: ")
    code, err = status("train", "--epochs", "-1", "--out", "m.npz")
    assert code == 2 and err.strip().endswith("argument --epochs: must be >= 1, got -1")
    assert status("--version")[0] == 0


def test_debug_shows_the_traceback(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SPARSEFAN_DEBUG", "1")
    with pytest.raises(io.ModelFileError, match="absent.npz"):
        cli.main(["info", str(tmp_path / "absent.npz")])


def test_unexpected_errors_name_their_type_on_one_line(monkeypatch, capsys):
    def broken(args):
        raise KeyError("x\ny")
    monkeypatch.setattr(cli, "cmd_info", broken)
    code, _, err = run(["info", "m.npz"], capsys)
    assert code == 1 and "error: KeyError: " in err and "SPARSEFAN_DEBUG=1" in err
    assert_error(err, "info", 1)


def test_interrupt_exits_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "cmd_info", interrupted)
    code, _, err = run(["info", "m.npz"], capsys)
    assert code == 130 and err == "sparsefan info: interrupted\n"


def test_warnings_are_one_line(model_file, capsys):
    code, _, err = run(["eval", model_file, "--data", "embedded", "--limit", "5",
                        "--threads", str(10**9)], capsys)
    assert code == 0
    assert err.startswith("sparsefan eval: warning: ") and "more threads than" in err
    assert err.count("\n") == 1 and "warnings.warn" not in err


def test_a_violated_certificate_is_an_error(monkeypatch, model_file, tmp_path, capsys):
    real = report.evaluate_model

    def unsound(*a, **kw):
        r = real(*a, **kw)
        r["violations"] = 3
        return r
    monkeypatch.setattr(report, "evaluate_model", unsound)
    code, out, err = run(["robustness", model_file, "--data", "embedded", "--n", "4",
                          "--ddn-steps", "2", "--rs-queries", "1", "--out",
                          str(tmp_path / "r")], capsys)
    assert code == 1 and "| NO: 3 |" in out  # the report is written and shown, then the error
    assert "3 certificate violation(s): an attack beat a certificate" in err
    assert_error(err, "robustness", 1)


def _fake_result(label):
    c0 = {k: max(0.0, 1 - k / 20) for k in report.L0_BUDGETS}
    c2 = {e: max(0.0, 1 - e / 3) for e in report.L2_GRID + [1.58]}
    return {"label": label, "name": label, "aggregate": "mean_logits", "n": 10,
            "clean_accuracy": 0.9, "attack_l0_min": {"greedy": 5.0}, "robust_l0": c0,
            "robust_l2": c2, "robust_linf": {0.1: 0.5, 0.2: 0.3, 0.3: 0.1}, "median_l0": 5.0,
            "median_l2": 1.2, "certified_l0": c0, "median_certified_l0": 3.0,
            "certified_l2": c2, "median_certified_l2": 0.8, "violations": 0}


def test_report_plots_leave_the_callers_backend_alone(tmp_path):
    pytest.importorskip("matplotlib")
    results = tmp_path / "results.json"
    results.write_text(json.dumps([_fake_result("a"), _fake_result("b")]))
    script = f"""
import sys
import matplotlib
matplotlib.use("svg")
from sparsefan import report
report.write_report(report.load_results({str(results)!r}), {str(tmp_path / 'out')!r}, "cmd")
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": SOURCE}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["svg", "False"]
    made = sorted(os.listdir(tmp_path / "out"))
    assert made == ["certified_l0.png", "certified_l2.png", "report.md", "results.json",
                    "robust_l0.png", "robust_l2.png", "tradeoff_l2.png"]
    assert (tmp_path / "out" / "robust_l0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
