"""A probe-adapted teacher and a student on `digits`, through the CLI, plus resume, evaluate, predict, export."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import confusion_matrix, top_k_accuracy_score

from conftest import run_cli
from mtkd.data import load_dataset
from mtkd.engine import trainer as trainer_module
from mtkd.engine.builders import load_model
from mtkd.engine.evaluate import evaluate_checkpoint
from mtkd.engine.trainer import predict
from mtkd.models.pretrained import OFFLINE_WEIGHTS

STUDENT = ["train", "--dataset", "digits", "--model", "cnn_small", "--epochs", "6", "--lr", "0.1",
           "--set", "train.batch_size=64"]  # fmt: skip


@pytest.fixture(scope="module")
def student_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("student") / "run"
    from mtkd.cli.main import main

    main(STUDENT + ["--out", str(out)])
    return out


def test_student_far_above_chance(student_run):
    summary = __import__("json").loads((student_run / "summary.json").read_text())
    assert summary["test_acc"] > 0.6  # chance is 0.1
    assert summary["params"] == 24058
    rows = (student_run / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 6
    assert any(p.name.startswith("events") for p in (student_run / "tb").iterdir())


def test_resume_gives_the_same_final_weights(student_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "interrupted"
    original = trainer_module.Trainer._save

    def save_then_crash(self, epoch, row, improved):
        original(self, epoch, row, improved)
        if epoch == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.Trainer, "_save", save_then_crash)
    code, _, _ = run_cli(STUDENT + ["--out", out], capsys)
    assert code == 130
    monkeypatch.setattr(trainer_module.Trainer, "_save", original)
    code, _, err = run_cli(STUDENT + ["--out", out, "--resume"], capsys)
    assert code == 0, err
    a = load_file(str(student_run / "last.safetensors"))
    b = load_file(str(out / "last.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the interrupted run's metrics file has each epoch once
    assert [r.split(",")[0] for r in (out / "metrics.csv").read_text().splitlines()[1:]] == list("123456")


def test_a_finished_run_is_not_overwritten(student_run, capsys):
    before = (student_run / "best.safetensors").read_bytes()
    code, _, err = run_cli(STUDENT + ["--out", student_run], capsys)
    assert code == 2 and "already holds a run" in err and len(err.strip().splitlines()) == 1
    assert (student_run / "best.safetensors").read_bytes() == before


def test_evaluate_matches_an_independent_computation(student_run):
    report = evaluate_checkpoint(str(student_run), "test", "cpu")
    model, meta, transform = load_model(str(student_run), torch.device("cpu"))
    ds = load_dataset("digits")
    logits = predict(model, ds.test.images, transform, 100, torch.device("cpu")).numpy()
    y = ds.test.labels.numpy()
    assert report["top1"] == pytest.approx(float((logits.argmax(1) == y).mean()))
    assert report["top5"] == pytest.approx(top_k_accuracy_score(y, logits, k=5, labels=np.arange(10)))
    cm = confusion_matrix(y, logits.argmax(1), labels=np.arange(10))
    assert report["confusion"] == cm.tolist()
    assert report["per_class"]["3"] == pytest.approx(cm[3, 3] / cm[3].sum())


def test_predict_and_export(student_run, tmp_path, capsys):
    from PIL import Image

    ds = load_dataset("digits")
    path = tmp_path / "digit.png"
    Image.fromarray(ds.test.images[0, 0].numpy()).save(path)
    code, out, _ = run_cli(["predict", student_run, path], capsys)
    assert code == 0 and str(path) in out
    onnx = pytest.importorskip("onnxruntime")
    code, out, err = run_cli(["export", student_run, "--out", tmp_path / "s.onnx"], capsys)
    assert code == 0, err
    session = onnx.InferenceSession(str(tmp_path / "s.onnx"))
    model, _, transform = load_model(str(student_run), torch.device("cpu"))
    x = ds.test.images[:5]
    expected = model(transform(x)).detach().numpy()
    got = session.run(None, {"images": (x.float() / 255).numpy()})[0]
    assert np.abs(got - expected).max() < 1e-4


@pytest.mark.skipif(
    OFFLINE_WEIGHTS["mobilenet_v2"].path() is None, reason="offline MobileNetV2 not installed"
)
def test_probe_teacher_on_digits(tmp_path, capsys):
    out = tmp_path / "teacher"
    args = ["teacher", "fit", "--dataset", "digits", "--teacher", "mobilenet_v2", "--input-size", "64",
            "--epochs", "40", "--lr", "0.003", "--out", out]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    summary = __import__("json").loads((out / "summary.json").read_text())
    assert summary["test_acc"] > 0.8  # chance is 0.1
    assert summary["kind"] == "teacher" and summary["params"] > 2_000_000
    report = evaluate_checkpoint(str(out), "test", "cpu")
    assert report["top1"] == pytest.approx(summary["test_acc"])


@pytest.mark.skipif(
    OFFLINE_WEIGHTS["mobilenet_v2"].path() is None, reason="offline MobileNetV2 not installed"
)
def test_finetune_with_frozen_layers_and_flatten_head(tmp_path, capsys):
    out = tmp_path / "ft"
    args = ["teacher", "fit", "--dataset", "digits", "--teacher", "mobilenet_v2", "--input-size", "32",
            "--mode", "finetune", "--head", "flatten", "--set", "teacher.head_hidden=[32]",
            "--set", "adapt.freeze=[features.0, features.1]", "--epochs", "2", "--lr", "0.001", "--out", out]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    from mtkd.engine.checkpoint import read_meta
    from mtkd.models.pretrained import read_state_dict

    pretrained = read_state_dict(OFFLINE_WEIGHTS["mobilenet_v2"].path())
    tuned = load_file(str(out / "last.safetensors"))
    # frozen layers keep their ImageNet weights; the others moved
    assert torch.equal(tuned["body.features.0.0.weight"], pretrained["features.0.0.weight"])
    assert not torch.equal(tuned["body.features.5.conv.0.0.weight"], pretrained["features.5.conv.0.0.weight"])
    # flatten head: 1280 channels x 1 x 1 at 32 px -> 32 -> 10
    assert tuned["head.1.weight"].shape == (32, 1280) and tuned["head.4.weight"].shape == (10, 32)
    assert read_meta(out)["report"]["test_acc"] > 0.1
