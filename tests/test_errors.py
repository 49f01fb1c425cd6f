"""Bad input ends with one line naming the problem and exit status 2."""

import pytest

from conftest import run_cli


def _one_line_error(code, err):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mtkd: error:"), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "optim.lrr=0.1"], "unknown config key 'optim.lrr' (allowed here: name, lr, momentum"),
        (["--set", "nothing.here=1"], "unknown config key 'nothing.here'"),
        (["--optim.lr", "-0.1"], "bad value for 'optim.lr'"),
        (["--optim.name", "adam"], "'sgd' or 'adamw'"),
        (["--train.batch_size", "many"], "bad value for 'train.batch_size'"),
        (["--epochs", "0"], "bad value for 'schedule.epochs'"),
        (["--model", "resnet2O"], "unknown model 'resnet2O'"),
        (["--dataset", "imagenet-22k"], "unknown dataset 'imagenet-22k'"),
        (["--data-dir", "/nonexistent/dir"], "data directory not found"),
        (["--dataset", "folder:/nonexistent/images"], "image folder not found"),
        (["--set", "optim.lr"], "--set takes key=value"),
        (["--config", "/nonexistent.yaml"], "config file not found"),
        (["--resume"], "nothing to resume"),
        (["--teachers", "[runs/no-such-teacher]"], "teacher checkpoint not found: runs/no-such-teacher"),
        (["--methods", "[fitnet]"], "unknown method 'fitnet'"),
        (["--methods", "[features]"], "method 'features' needs teachers"),
    ],
)
def test_train_config_errors(args, expected, tmp_path, capsys):
    code, _, err = run_cli(["train", "--out", tmp_path / "run", *args], capsys)
    assert expected in _one_line_error(code, err)
    assert not (tmp_path / "run").exists()  # a failed start leaves nothing behind


def test_unknown_key_in_yaml(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim:\n  lr: 0.1\n  momentun: 0.9\n")
    code, _, err = run_cli(["train", "--config", cfg], capsys)
    assert "unknown config key 'optim.momentun'" in _one_line_error(code, err)
    cfg.write_text("optim: [unclosed\n")
    code, _, err = run_cli(["train", "--config", cfg], capsys)
    assert "not valid YAML" in _one_line_error(code, err)


def test_teacher_fit_errors(tmp_path, capsys):
    code, _, err = run_cli(["teacher", "fit", "--head", "conv", "--out", tmp_path], capsys)
    assert "'teacher.head'" in _one_line_error(code, err)
    code, _, err = run_cli(["teacher", "fit", "--teacher", "cnn_small", "--out", tmp_path / "x"], capsys)
    assert "student architecture" in _one_line_error(code, err)


def test_broken_files(tmp_path, capsys):
    code, _, err = run_cli(["evaluate", tmp_path], capsys)
    assert "no checkpoint" in _one_line_error(code, err)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    (tmp_path / "fake.json").write_text("{not json")
    code, _, err = run_cli(["predict", tmp_path / "fake.json", empty], capsys)
    assert "unreadable" in _one_line_error(code, err)
