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


def test_a_config_file_that_is_not_text(tmp_path, capsys):
    config = tmp_path / "student.yaml"
    config.write_bytes(b"data:\n  name: digits\n\x89PNG\r\n\x1a\n\xff\xfe\x00")
    for args in (["train", "--config", config, "--out", tmp_path / "run"], ["study", config]):
        code, _, err = run_cli(args, capsys)
        assert f"config file {config} is not UTF-8 text (byte 21" in _one_line_error(code, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.yaml"]


# ---- data, checkpoints and files --------------------------------------------------------------


def _image_folder(root, mode="L", classes=("cat", "dog"), per_class=10, size=12):
    """ROOT/train/<class>/*.png and ROOT/val/<class>/*.png of random pixels."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                shape = (size, size) if mode == "L" else (size, size, 3)
                Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda r: (r / "train" / "cat" / "0.png").write_bytes(b""), "image file is empty (0 bytes)"),
        (
            lambda r: (r / "train" / "dog" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really"),
            "cannot read image",
        ),
        (lambda r: [p.unlink() for p in (r / "val" / "dog").iterdir()], "class folder has no images"),
        (lambda r: (r / "val" / "cat").rename(r / "val" / "kitten"), "differ from those of"),
        (lambda r: (r / "val").rename(r / "holdout"), "needs a train/ folder and a val/ or test/"),
    ],
)
def test_broken_image_folders(damage, expected, tmp_path, capsys):
    root = _image_folder(tmp_path / "data")
    damage(root)
    code, _, err = run_cli(["train", "--dataset", f"folder:{root}", "--out", tmp_path / "run"], capsys)
    assert expected in _one_line_error(code, err)
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def grey_teacher(tmp_path_factory):
    """A teacher adapted (1 epoch, probe) to a grey image folder with classes cat and dog."""
    from mtkd.cli.main import main

    root = tmp_path_factory.mktemp("grey")
    data = _image_folder(root / "data")
    main(["teacher", "fit", "--dataset", f"folder:{data}", "--teacher", "mobilenet_v2", "--input-size", "32",
          "--epochs", "1", "--out", str(root / "teacher"), "--set", "output.tensorboard=false"])  # fmt: skip
    return root / "teacher"


def test_teacher_of_other_classes_or_colours(grey_teacher, tmp_path, capsys):
    code, _, err = run_cli(["train", "--dataset", "digits", "--teachers", f"[{grey_teacher}]",
                            "--methods", "[features]", "--out", tmp_path / "a"], capsys)  # fmt: skip
    assert "was adapted to other classes than digits's" in _one_line_error(code, err)
    colour = _image_folder(tmp_path / "colour", mode="RGB")
    code, _, err = run_cli(["train", "--dataset", f"folder:{colour}", "--teachers", f"[{grey_teacher}]",
                            "--methods", "[features]", "--out", tmp_path / "b"], capsys)  # fmt: skip
    # the folder's store is built first (its progress lines), then the one-line error
    assert "was adapted to grey images and" in _one_line_error_last(code, err)
    assert "has colour ones" in err and err.count("mtkd: error:") == 1
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_damaged_or_foreign_checkpoints(grey_teacher, tmp_path, capsys):
    import json
    import shutil

    run = tmp_path / "t"
    shutil.copytree(grey_teacher, run)
    weights = run / "best.safetensors"
    good = weights.read_bytes()
    # A teacher checkpoint where a student's is expected, and a student's where a teacher's is.
    code, _, err = run_cli(
        ["train", "--dataset", "digits", "--teachers", "[runs/x]", "--out", tmp_path / "s"], capsys
    )
    assert "teacher checkpoint not found" in _one_line_error(code, err)
    # Another architecture named in the metadata: the weights do not fit it.
    meta = json.loads((run / "best.json").read_text())
    edited = {**meta, "model": {**meta["model"], "name": "tf_efficientnet_lite0"}}
    (run / "best.json").write_text(json.dumps(edited))
    code, _, err = run_cli(["evaluate", run / "best.json", "--split", "val"], capsys)
    assert "was altered after it was saved" in _one_line_error(code, err)
    from mtkd.engine.checkpoint import content_hash

    (run / "best.json").write_text(json.dumps({**edited, "content_sha256": content_hash(edited)}))
    code, _, err = run_cli(["evaluate", run / "best.json", "--split", "val"], capsys)
    assert "does not fit tf_efficientnet_lite0" in _one_line_error(code, err)
    (run / "best.json").write_text(json.dumps(meta))
    # Truncated, then one flipped byte.
    weights.write_bytes(good[: len(good) // 2])
    code, _, err = run_cli(["evaluate", run, "--split", "val"], capsys)
    assert "is truncated" in _one_line_error(code, err)
    weights.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    code, _, err = run_cli(["evaluate", run, "--split", "val"], capsys)
    assert "corrupt or truncated (hash mismatch)" in _one_line_error(code, err)


def test_disk_full_while_saving_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    import errno

    from mtkd.engine import checkpoint
    from mtkd.engine.checkpoint import load_train_state, load_weights, read_meta

    real, calls = checkpoint.save_file, []

    def filling_up(tensors, path):  # the disk fills up part way through the third file
        calls.append(path)
        if len(calls) == 3:
            with open(path, "wb") as fh:
                fh.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        real(tensors, path)

    monkeypatch.setattr(checkpoint, "save_file", filling_up)
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "--dataset", "digits", "--epochs", "3", "--out", run,
                            "--set", "output.tensorboard=false"], capsys)  # fmt: skip
    line = _one_line_error_last(code, err)
    assert "No space left on device" in line and "the previous version is kept" in line
    meta = read_meta(run / "last.json")  # epoch 1, whole and verified
    assert meta["epoch"] == 1 and load_weights(meta) and load_train_state(meta)["epoch"] == 1
    assert not list(run.glob(".*.tmp"))


def _one_line_error_last(code, err):
    """The last line is the error (training printed progress lines before it)."""
    assert code == 2 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("mtkd: error:")
    return line


def test_nan_loss_names_the_step_and_keeps_the_checkpoint(tmp_path, capsys):
    from mtkd.engine.checkpoint import load_weights, read_meta

    run = tmp_path / "run"
    code, _, err = run_cli(["train", "--dataset", "digits", "--epochs", "3", "--lr", "10", "--out", run,
                            "--set", "optim.momentum=0.99", "--set", "optim.weight_decay=0.9",
                            "--set", "output.tensorboard=false"], capsys)  # fmt: skip
    line = _one_line_error_last(code, err)
    assert "loss term 'ce' is nan at epoch 2, step 7; stopped (the last good checkpoint stays in" in line
    meta = read_meta(run / "last.json")
    assert meta["epoch"] == 1 and all(v.isfinite().all() for v in load_weights(meta).values())


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["study", "configs/demo/study.yaml", "--jobs", "0"], "--jobs must be >= 1"),
        (["study", "configs/demo/study.yaml", "--nproc-per-run", "0"], "--nproc-per-run must be >= 1"),
        (["train", "--nproc", "0"], "--nproc must be >= 1"),
        (["predict", "runs/none", "x.png"], "checkpoint not found"),
        (["train", "--set", "transfer.views=0"], "bad value for 'transfer.views'"),
        (["train", "--set", "train.precision=fp8"], "bad value for 'train.precision'"),
        (["train", "--set", "train.precision=fp16", "--device", "cpu"], "fp16 needs a CUDA device"),
    ],
)
def test_more_bad_arguments(args, expected, tmp_path, capsys):
    code, _, err = run_cli([*args, "--out", tmp_path / "run"] if args[0] == "train" else args, capsys)
    assert expected in _one_line_error(code, err)
    assert not (tmp_path / "run").exists()


def test_on_off_words_are_not_booleans():
    from mtkd.engine.config import TrainConfig, build_config

    cfg = build_config(TrainConfig, None, {}, ["train.hflip=off", "train.channels_last=on"])
    assert (cfg.train.hflip, cfg.train.channels_last) == ("off", "on")
