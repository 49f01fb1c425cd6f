"""A run's results depend on its config and data only: the compute-thread count is part of the
run (recorded, kept on resume, set whatever ran before in the process and given back after)."""

from __future__ import annotations

import json

import torch
import yaml
from safetensors.torch import load_file

from conftest import run_cli
from mtkd.device import default_threads

RUN = ["train", "--dataset", "digits", "--model", "cnn_small", "--epochs", "2", "--batch-size", "64",
       "--set", "output.tensorboard=false", "--set", "output.progress=false"]  # fmt: skip


def test_a_run_records_its_threads_and_leaves_the_process_as_it_was(tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # what an earlier in-process run with train.threads=1 once left behind
        code, _, err = run_cli([*RUN, "--out", tmp_path / "a"], capsys)
        assert code == 0, err
        assert torch.get_num_threads() == 1
        recorded = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["train"]["threads"]
        assert recorded == default_threads()
        torch.set_num_threads(2)
        code, _, err = run_cli([*RUN, "--out", tmp_path / "b"], capsys)
        assert code == 0, err
    finally:
        torch.set_num_threads(before)
    # The same config gives the same bits, whatever the process was set to before.
    a, b = (load_file(str(tmp_path / d / "last.safetensors")) for d in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_keeps_the_threads_of_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = run_cli([*RUN, "--out", run, "--set", "train.threads=2"], capsys)
    assert code == 0, err
    code, _, err = run_cli([*RUN, "--out", run, "--resume", "--set", "train.threads=1"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "trained with train.threads=2" in err and "set it to 2" in err
    code, _, err = run_cli([*RUN, "--out", run, "--resume"], capsys)  # no count given: the run's own
    assert code == 0, err
    assert json.loads((run / "best.json").read_text())["config"]["train"]["threads"] == 2


def test_a_setting_is_settled_as_asked_else_as_saved_else_the_default():
    import pytest

    from mtkd.engine.config import settled
    from mtkd.errors import MtkdError

    default = lambda: 7  # noqa: E731
    assert settled(None, None, default) == 7
    assert settled(None, 3, default) == 3
    assert settled(2, None, default) == 2
    assert settled(2, 3, default) == 2  # without refuse, what is asked wins (a study's threads)
    assert settled("auto", "fp16", lambda: "fp32", unset="auto") == "fp16"
    assert settled("auto", None, lambda: "fp32", unset="auto") == "fp32"
    assert settled(3, 3, default, refuse=lambda s: "no") == 3
    with pytest.raises(MtkdError, match="^saved 3$"):
        settled(2, 3, default, refuse=lambda s: f"saved {s}")
