"""Shipping a student: the timm / Hugging Face folder and its card, the Hub, int8 ONNX, predict."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mtkd
from conftest import run_cli
from mtkd.data import load_dataset
from mtkd.deploy.hf import export_folder

ort = pytest.importorskip("onnxruntime")


def _train(out: Path, model: str, epochs: int = 2) -> Path:
    mtkd.train(dataset="digits", model=model, epochs=epochs, out=out, **{"output.progress": False})
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    return {"timm": _train(root / "timm", "timm:resnet10t"), "mtkd": _train(root / "mtkd", "cnn_small")}


def _one_line(code: int, err: str) -> str:
    """The one error line (progress lines may come before it), with no traceback."""
    errors = [line for line in err.strip().splitlines() if line.startswith("mtkd: error:")]
    assert code != 0 and len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def _digits_batch() -> torch.Tensor:
    return load_dataset("digits").test.images[:16].float() / 255.0


def test_timm_folder_loads_with_plain_timm_in_a_fresh_process(runs, tmp_path, capsys):
    out = tmp_path / "hf"
    code, stdout, err = run_cli(["export", runs["timm"], "--format", "hf", "--out", out], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    x = _digits_batch()
    expected = mtkd.load_student(runs["timm"])(x).detach()
    np.save(tmp_path / "x.npy", x.numpy())
    # nothing of mtkd in that process: timm, the folder and its config's normalisation
    script = f"""
import json, numpy as np, timm, torch
model = timm.create_model("local-dir:{out}", pretrained=True).eval()
cfg = model.pretrained_cfg
mean, std = (torch.tensor(cfg[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
x = torch.from_numpy(np.load("{tmp_path / "x.npy"}"))
np.save("{tmp_path / "y.npy"}", model((x - mean) / std).detach().numpy())
print(json.dumps([cfg["input_size"], cfg["label_names"], cfg["interpolation"], cfg["crop_pct"]]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    size, labels, interpolation, crop = json.loads(done.stdout)
    assert (
        size == [1, 8, 8]
        and labels == [str(i) for i in range(10)]
        and interpolation == "bilinear"
        and crop == 1.0
    )
    got = torch.from_numpy(np.load(tmp_path / "y.npy"))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # and through mtkd, without the run folder
    shutil.move(str(runs["timm"]), str(tmp_path / "moved"))
    try:
        student = mtkd.load_student(f"local-dir:{out}")
        torch.testing.assert_close(student(x).detach(), expected, rtol=0, atol=1e-6)
        assert student.classes == [str(i) for i in range(10)] and tuple(student.image_size) == (8, 8)
    finally:
        shutil.move(str(tmp_path / "moved"), str(runs["timm"]))


def test_mtkd_student_folder_loads_with_load_student(runs, tmp_path):
    out = tmp_path / "hf"
    info = export_folder(runs["mtkd"], out)
    assert (
        info["library"] == "mtkd"
        and json.loads((out / "config.json").read_text())["architecture"] == "cnn_small"
    )
    x = _digits_batch()
    expected = mtkd.load_student(runs["mtkd"])(x).detach()
    torch.testing.assert_close(mtkd.load_student(f"local-dir:{out}")(x).detach(), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(mtkd.load_student(out)(x).detach(), expected, rtol=0, atol=1e-6)


def test_the_card_is_read_by_huggingface_hub(runs, tmp_path):
    from huggingface_hub import ModelCard

    out = tmp_path / "hf"
    export_folder(runs["timm"], out)
    card = ModelCard.load(out / "README.md")
    summary = json.loads((runs["timm"] / "summary.json").read_text())
    assert card.data.library_name == "timm" and card.data.pipeline_tag == "image-classification"
    assert card.data.datasets == ["digits"] and "knowledge-distillation" in card.data.tags
    (result,) = card.data.eval_results
    assert result.metric_type == "accuracy" and result.dataset_split == "test"
    assert result.metric_value == pytest.approx(summary["test_acc"], abs=1e-6)
    text = card.text
    assert f"{100 * summary['test_acc']:.2f}%" in text and "one run, seed 0" in text
    assert f"{summary['params']:,}" in text and "ms (PyTorch, float32)" in text
    assert 'timm.create_model("local-dir:' in text and "labels alone (no teachers)" in text


def test_hub_names_load_from_the_hub_cache_offline(runs, tmp_path):
    """An export pushed to the Hub and fetched once is read by timm as hf-hub:ORG/NAME (here from a
    cache laid out as huggingface_hub lays it out, offline): as a model, and as a pretrained student."""
    out = tmp_path / "hf"
    export_folder(runs["timm"], out)
    commit = "0" * 40
    repo = tmp_path / "hub" / "models--someone--digits-student"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(out, repo / "snapshots" / commit)
    x = _digits_batch()
    expected = mtkd.load_student(runs["timm"])(x).detach()
    np.save(tmp_path / "x.npy", x.numpy())
    script = f"""
import numpy as np, timm, torch
model = timm.create_model("hf-hub:someone/digits-student", pretrained=True).eval()
cfg = model.pretrained_cfg
mean, std = (torch.tensor(cfg[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
np.save("{tmp_path / "y.npy"}", model((torch.from_numpy(np.load("{tmp_path / "x.npy"}")) - mean) / std).detach().numpy())
"""
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "y.npy")), expected, rtol=0, atol=1e-6)
    # a student named by the Hub starts from those weights (a new run on the same data)
    done = subprocess.run(
        [sys.executable, "-m", "mtkd", "train", "--dataset", "digits", "--model", "hf-hub:someone/digits-student",
         "--set", "model.pretrained=auto", "--epochs", "1", "--lr", "1e-9", "--out", str(tmp_path / "again")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    meta = json.loads((tmp_path / "again" / "best.json").read_text())
    assert meta["model"]["weights_source"] == "hf-hub:someone/digits-student"
    assert meta["model"]["architecture"] == "resnet10t"
    again = mtkd.load_student(
        tmp_path / "again"
    ).model  # rebuilt without the Hub, from the recorded architecture
    exported = mtkd.load_student(f"local-dir:{out}").model
    for (name, a), b in zip(again.named_parameters(), exported.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)  # lr 1e-9: they started there


def test_push_offline_is_one_line_and_keeps_the_folder(runs, tmp_path):
    out = tmp_path / "hf"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "mtkd", "export", str(runs["mtkd"]), "--format", "hf", "--out", str(out)]
    done = subprocess.run([*cmd, "--push", "me/digits"], capture_output=True, text=True, env=env)
    line = _one_line(done.returncode, done.stderr)
    assert "cannot push to the Hub repository me/digits" in line and f"{out} is kept" in line
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    for push, message in (
        (["--push"], "--push needs the Hub repository"),
        (["--push", "nobody"], "ORG/NAME"),
    ):
        done = subprocess.run(
            [*cmd[:-2], "--out", str(tmp_path / "x"), *push], capture_output=True, text=True, env=env
        )
        assert message in _one_line(done.returncode, done.stderr)
        assert not (tmp_path / "x").exists()


def test_push_uploads_the_folder_with_huggingface_hub(runs, tmp_path, monkeypatch):
    import huggingface_hub

    from mtkd.deploy.hub import push_folder

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kw):
            calls.append(("create", repo_id, kw["repo_type"], kw["exist_ok"]))

        def upload_folder(self, **kw):
            calls.append(("upload", kw["repo_id"], kw["folder_path"], sorted(os.listdir(kw["folder_path"]))))
            return type("Info", (), {"commit_url": f"https://huggingface.co/{kw['repo_id']}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    export_folder(runs["mtkd"], tmp_path / "hf")
    url = push_folder(tmp_path / "hf", "me/digits")
    assert calls == [("create", "me/digits", "model", True),
                     ("upload", "me/digits", str(tmp_path / "hf"), ["README.md", "config.json", "model.safetensors"])]  # fmt: skip
    assert url == "https://huggingface.co/me/digits/commit/1"


def test_int8_is_calibrated_on_train_and_measured_beside_float(runs, tmp_path, capsys, monkeypatch):
    from mtkd.deploy import onnx as deploy_onnx

    seen = []
    real = deploy_onnx._Calibration

    def spy(images, batch_size=32):
        seen.append(images.clone())
        return real(images, batch_size)

    monkeypatch.setattr(deploy_onnx, "_Calibration", spy)
    out = tmp_path / "m.onnx"
    code, stdout, err = run_cli(
        ["export", runs["mtkd"], "--format", "onnx-int8", "--out", out, "--calibration", "200"], capsys
    )
    assert code == 0, err
    assert (tmp_path / "m.int8.onnx").is_file()
    ds = load_dataset("digits")
    train = {bytes(x.numpy()) for x in ds.train.images}
    assert len(seen[0]) == 200 and all(bytes(x.numpy()) in train for x in seen[0])  # training images only
    test_x, test_y = ds.test.images.float().numpy() / 255.0, ds.test.labels.numpy()
    accs = []
    for path in (out, tmp_path / "m.int8.onnx"):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        accs.append(float((session.run(None, {"images": test_x})[0].argmax(1) == test_y).mean()))
    assert f"{100 * accs[0]:.2f}%" in stdout and f"{100 * accs[1]:.2f}%" in stdout
    assert "int8 is" in stdout and "x the float file's speed" in stdout
    assert ("WARNING: int8 loses" in stdout) == (accs[0] - accs[1] > 0.01)


def test_int8_verdict_says_a_loss_over_one_point_plainly():
    from mtkd.deploy.onnx import int8_verdict

    info = {"float_acc": 0.95, "int8_acc": 0.93, "float_ms": 1.0, "int8_ms": 0.5, "int8_path": "m.int8.onnx",
            "calibration_images": 512, "calibration_data": "digits"}  # fmt: skip
    assert int8_verdict(info)[0].startswith("WARNING: int8 loses 2.00 points of top-1 accuracy (more than 1)")
    assert not any("WARNING" in line for line in int8_verdict(info | {"int8_acc": 0.945}))


def test_calibration_images_of_another_channel_count_are_refused(runs, tmp_path, capsys):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(10):
            (tmp_path / "rgb" / split / str(c)).mkdir(parents=True)
            for i in range(12):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                    tmp_path / "rgb" / split / str(c) / f"{i}.png"
                )
    out = tmp_path / "m.onnx"
    code, _, err = run_cli(["export", runs["mtkd"], "--format", "onnx-int8", "--out", out,
                            "--calibrate", f"folder:{tmp_path / 'rgb'}"], capsys)  # fmt: skip
    assert "has 3-channel 8x8 images; the model takes 1-channel 8x8 ones" in _one_line(code, err)
    assert not out.exists() and not (tmp_path / "m.int8.onnx").exists()


def test_predict_a_folder_to_csv_from_a_run_an_export_and_onnx(runs, tmp_path, capsys):
    ds = load_dataset("digits")
    for i in range(40):
        folder = tmp_path / "imgs" / f"class{int(ds.test.labels[i])}" / ("deep" if i % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ds.test.images[i, 0].numpy()).save(folder / f"{i:03d}.png")
    export_folder(runs["mtkd"], tmp_path / "hf")
    run_cli(["export", runs["mtkd"], "--out", tmp_path / "m.onnx"], capsys)
    student = mtkd.load_student(runs["mtkd"])
    tables = []
    for source in (runs["mtkd"], f"local-dir:{tmp_path / 'hf'}", tmp_path / "m.onnx"):
        code, stdout, err = run_cli(["predict", source, tmp_path / "imgs", "--batch-size", "7"], capsys)
        assert code == 0, err
        rows = list(csv.DictReader(io.StringIO(stdout)))
        assert len(rows) == 40 and list(rows[0]) == ["path", "class", "probability", "top5"]
        tables.append(rows)
    files = sorted(str(p) for p in (tmp_path / "imgs").rglob("*.png"))
    assert [r["path"] for r in tables[0]] == files
    index = {f: int(Path(f).stem) for f in files}
    x = torch.stack([ds.test.images[index[f]] for f in files]).float() / 255.0
    probs = student(x).softmax(1).detach()
    for rows in tables:
        for row, p in zip(rows, probs, strict=True):
            assert row["class"] == str(int(p.argmax())) and float(row["probability"]) == pytest.approx(
                float(p.max()), abs=1e-4
            )
            top = [pair.split(":") for pair in row["top5"].split(";")]
            assert [c for c, _ in top] == [str(int(i)) for i in p.topk(5).indices]
    code, _, err = run_cli(["predict", runs["mtkd"], tmp_path / "imgs", "--out", tmp_path / "p.csv"], capsys)
    assert code == 0 and "wrote 40 predictions" in err
    assert (tmp_path / "p.csv").read_text().splitlines()[1].split(",")[0] == files[0]


def test_predict_bad_input_is_one_line_and_writes_nothing(runs, tmp_path, capsys):
    good = tmp_path / "imgs" / "a.png"
    good.parent.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(good)
    (tmp_path / "imgs" / "b.png").write_bytes(b"not a png at all")
    csv_out = tmp_path / "p.csv"
    code, _, err = run_cli(["predict", runs["mtkd"], tmp_path / "imgs", "--out", csv_out], capsys)
    assert "cannot read image" in _one_line(code, err) and "b.png" in err and not csv_out.exists()
    code, _, err = run_cli(["predict", runs["mtkd"], tmp_path / "nowhere"], capsys)
    assert "image file or folder not found" in _one_line(code, err)
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["predict", tmp_path / "empty", good], capsys)
    assert _one_line(code, err)
    code, _, err = run_cli(["predict", f"local-dir:{tmp_path / 'empty'}", good], capsys)
    assert "is not an exported model (no config.json)" in _one_line(code, err)


def test_unfinished_runs_and_occupied_folders_are_refused(runs, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(runs["mtkd"], unfinished)
    (unfinished / "summary.json").unlink()
    for fmt, out in (
        ("hf", tmp_path / "a"),
        ("onnx", tmp_path / "a.onnx"),
        ("onnx-int8", tmp_path / "b.onnx"),
    ):
        code, _, err = run_cli(["export", unfinished, "--format", fmt, "--out", out], capsys)
        assert "the run has not finished (no summary.json)" in _one_line(code, err)
        assert not out.exists()
    occupied = tmp_path / "mine"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    code, _, err = run_cli(["export", runs["mtkd"], "--format", "hf", "--out", occupied], capsys)
    assert "exists and is not a folder mtkd wrote" in _one_line(code, err)
    assert [p.name for p in occupied.iterdir()] == ["notes.txt"]
    # an earlier export is replaced whole; no temporary folder is left beside it
    export_folder(runs["mtkd"], tmp_path / "hf")
    (tmp_path / "hf" / "stale.txt").write_text("old")
    export_folder(runs["timm"], tmp_path / "hf")
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architecture"] == "resnet10t"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hf.")]
    code, _, err = run_cli(
        ["export", runs["mtkd"], "--format", "onnx", "--out", tmp_path / "c.onnx", "--push", "me/x"], capsys
    )
    assert "--push uploads an exported folder: use it with --format hf" in _one_line(code, err)
