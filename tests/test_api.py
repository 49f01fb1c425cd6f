"""The Python API: your own modules and data, options that mirror the config, loading a student."""

from __future__ import annotations

import warnings

import pytest
import torch
import yaml
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

import mtkd
from mtkd.api import _overrides
from mtkd.data import from_tensors, from_torch
from mtkd.engine.config import TrainConfig
from mtkd.models.adapters import OutputsView
from mtkd.registry import Registry
from mtkd.teachers import ModuleTeacher
from mtkd.teachers.cache import teacher_identity


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    return torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None], torch.tensor(d.target)


def sequential(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(256, 10),
    )  # fmt: skip


class PixelTeacher(nn.Module):
    """A teacher of one's own: a linear classifier on the pixels, fitted by least squares."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        super().__init__()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(64, 10)
        a = torch.cat([x.flatten(1).double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
        w = torch.linalg.lstsq(a, torch.eye(10, dtype=torch.float64)[y] * 10).solution
        with torch.no_grad():
            self.fc.weight.copy_(w[:64].T.float())
            self.fc.bias.copy_(w[64].float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flat(x))


def test_float_tensors_arrays_and_pil_images_become_the_same_uint8_images():
    x, y = digits_tensors()
    levels = torch.round(x * 255).to(torch.uint8)
    ds = from_tensors(x[:300], y[:300], x[300:400], y[300:400], x_val=x[400:450], y_val=y[400:450])
    assert torch.equal(ds.test.images, levels[300:400])
    assert torch.equal(
        from_tensors(x[:300] * 255, y[:300], x[300:400], y[300:400]).test.images, levels[300:400]
    )
    hwc = levels[:300].permute(0, 2, 3, 1).numpy()  # [N, H, W, C] arrays
    assert torch.equal(from_tensors(hwc, y[:300].numpy(), hwc, y[:300]).test.images, levels[:300])
    pil = [(Image.fromarray(levels[i, 0].numpy(), mode="L"), int(y[i])) for i in range(200)]
    ds = from_torch(pil, pil, classes=[f"digit {i}" for i in range(10)])
    assert torch.equal(ds.test.images, levels[:200]) and ds.classes[3] == "digit 3"
    ds = from_torch(TensorDataset(x[:300], y[:300]), TensorDataset(x[300:400], y[300:400]))
    assert torch.equal(ds.test.images, levels[300:400]) and len(ds.train) + len(ds.val) == 300
    with pytest.raises(mtkd.MtkdError, match="look normalised"):
        from_tensors((x[:50] - 0.5) / 0.2, y[:50], x[:50], y[:50])
    with pytest.raises(mtkd.MtkdError, match="labels go up to 9 but 3 classes"):
        from_tensors(x[:50], y[:50], x[:50], y[:50], classes=["a", "b", "c"])


def test_a_module_is_read_at_its_last_linear_layer_or_a_named_layer():
    model = sequential().eval()
    x = torch.rand(4, 1, 8, 8)
    fmap, pooled, logits = OutputsView(model)(x)
    by_hand = torch.nn.functional.adaptive_avg_pool2d(model[:3](x), 4).flatten(1)
    assert fmap is None and torch.allclose(pooled, by_hand, atol=1e-6) and torch.equal(logits, model(x))
    fmap, pooled, _ = OutputsView(model, feature_layer="3")(x)  # the pooling layer: its input is the map
    assert torch.equal(fmap, model[:3](x)) and torch.allclose(
        pooled, model[:3](x).mean(dim=(2, 3)), atol=1e-6
    )
    with pytest.raises(mtkd.MtkdError, match="no module 'head'"):
        OutputsView(model, feature_layer="head")


def test_a_teacher_module_is_keyed_by_its_content():
    x, y = digits_tensors()
    a, b = PixelTeacher(x[:1000], y[:1000]), PixelTeacher(x[:1000], y[:1000])
    keys = []
    for t in (a, b):
        keys.append(teacher_identity(ModuleTeacher(t).bind(1, (8, 8))))
    assert keys[0] == keys[1]
    with torch.no_grad():
        b.fc.bias[0] += 1e-3
    assert teacher_identity(ModuleTeacher(b).bind(1, (8, 8))) != keys[0]
    assert (
        teacher_identity(ModuleTeacher(a, mean=[0.3], std=[0.5]).bind(1, (8, 8))) != keys[0]
    )  # its preprocessing
    assert (
        teacher_identity(ModuleTeacher(a, name="another name").bind(1, (8, 8))) == keys[0]
    )  # never its name
    with pytest.raises(mtkd.MtkdError, match=r"PixelTeacher cannot take \[N, 1, 16, 16\] images"):
        ModuleTeacher(a, input_size=16).bind(1, (8, 8))


def test_a_plain_sequential_student_learns_from_a_teacher_module_on_float_tensors(tmp_path):
    x, y = digits_tensors()
    train, test = TensorDataset(x[:1400], y[:1400]), TensorDataset(x[1400:], y[1400:])
    teacher = PixelTeacher(x[:1400], y[:1400])
    with torch.inference_mode():
        assert (teacher(x[1400:]).argmax(1) == y[1400:]).float().mean() > 0.85  # a real teacher
    student = sequential()
    run = mtkd.train(
        student, teachers=[teacher], data=(train, test), methods=["features", {"name": "avg_kd", "weight": 0.5}],
        epochs=15, batch_size=64, out=tmp_path / "s", progress=False, tensorboard=False,
    )  # fmt: skip
    # The teacher gives logits for the 10 classes, so avg_kd ran; both terms were logged.
    header = (tmp_path / "s" / "metrics.csv").read_text().splitlines()[0]
    assert "train_features" in header and "train_avg_kd" in header
    recorded = yaml.safe_load((tmp_path / "s" / "config.yaml").read_text())
    wrapped = ModuleTeacher(teacher).bind(1, (8, 8))
    assert recorded["transfer"]["teachers"] == [f"python:PixelTeacher@{teacher_identity(wrapped)[:16]}"]
    assert recorded["model"]["name"] == "python:Sequential"
    # load_student takes float images in [0, 1]: its accuracy on the test tensors is the run's.
    fresh = sequential(seed=1)
    model = mtkd.load_student(run, model=fresh)
    quantised = torch.round(x[1400:] * 255) / 255
    with torch.inference_mode():
        acc = (model(quantised).argmax(1) == y[1400:]).float().mean().item()
    assert acc == pytest.approx(run.test_acc, abs=1e-6) and run.test_acc > 0.5
    assert model.classes == [str(i) for i in range(10)] and model.image_size == (8, 8)
    report = mtkd.evaluate(run, data=(train, test), model=sequential())
    assert report["top1"] == pytest.approx(run.test_acc, abs=1e-6)
    with pytest.raises(mtkd.MtkdError, match="given from Python as a module"):
        mtkd.load_student(run)
    with pytest.raises(mtkd.MtkdError, match="already holds a run"):
        mtkd.train(sequential(), data=(train, test), epochs=1, out=tmp_path / "s")


def _stats(run: mtkd.Run) -> tuple[list[float], list[float]]:
    import json

    data = json.loads((run.folder / "best.json").read_text())["data"]
    return data["mean"], data["std"]


def test_keywords_mirror_the_config():
    got = _overrides(
        TrainConfig, "train",
        {"epochs": 3, "views": 2, "optim": {"lr": 0.2, "momentum": 0.8}, "transfer.view_seed": 4, "out": "x"},
    )  # fmt: skip
    assert got == {"schedule.epochs": 3, "transfer.views": 2, "optim.lr": 0.2, "optim.momentum": 0.8,
                   "transfer.view_seed": 4, "output.dir": "x"}  # fmt: skip
    with pytest.raises(mtkd.MtkdError, match="ambiguous: say data.name or model.name or optim.name"):
        _overrides(TrainConfig, "train", {"name": "x"})
    with pytest.raises(mtkd.MtkdError, match="unknown option 'epoch'"):
        _overrides(TrainConfig, "train", {"epoch": 3})
    with pytest.raises(mtkd.MtkdError, match=r"bad value for 'schedule.epochs'"):
        mtkd.train("cnn_small", data="digits", epochs=0, out="never")
    from mtkd.api import _config

    # config= first (a mapping or a YAML path), then the keywords
    cfg = _config(
        TrainConfig, "train", {"optim": {"lr": 0.3, "name": "adamw"}, "schedule": {"epochs": 7}}, {"lr": 0.2}
    )
    assert (cfg.optim.lr, cfg.optim.name, cfg.schedule.epochs) == (0.2, "adamw", 7)


def test_a_name_registered_twice_warns_and_the_later_wins():
    reg: Registry[int] = Registry("widget", "mtkd.widgets-none")
    reg.register("a", 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg.register("a", 2, "python test")
    assert reg["a"] == 2 and "registered twice" in str(caught[0].message)
    with pytest.raises(mtkd.MtkdError, match=r"unknown widget 'b' \(known: a\)"):
        reg["b"]


def test_a_student_registered_from_python_trains_by_name_and_loads_without_its_module(tmp_path):
    mtkd.register_student("api_seq_test", lambda nc, ic: nn.Sequential(nn.Flatten(), nn.Linear(64 * ic, nc)))
    run = mtkd.train("api_seq_test", data="digits", epochs=2, out=tmp_path / "r", progress=False)
    model = mtkd.load_student(run)
    ds = mtkd.data.load_dataset("digits")
    with torch.inference_mode():
        acc = (model(ds.test.images.float() / 255).argmax(1) == ds.test.labels).float().mean().item()
    assert acc == pytest.approx(run.test_acc, abs=1e-6)
    # The module of a registered student is recorded by its name.
    made = mtkd.create_student("api_seq_test", 10, 1)
    run2 = mtkd.train(made, data="digits", epochs=1, out=tmp_path / "r2", progress=False)
    assert yaml.safe_load((run2.folder / "config.yaml").read_text())["model"]["name"] == "api_seq_test"
    # So is a module of the same architecture made by hand: the registry is asked, the RNG untouched.
    torch.manual_seed(3)
    by_hand = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    state = torch.random.get_rng_state()
    run4 = mtkd.train(by_hand, data="digits", epochs=1, out=tmp_path / "r4", progress=False)
    assert yaml.safe_load((run4.folder / "config.yaml").read_text())["model"]["name"] == "api_seq_test"
    from mtkd.models.zoo import registered_name

    torch.random.set_rng_state(state)
    assert registered_name(by_hand, 10, 1) == "api_seq_test"
    assert torch.equal(torch.random.get_rng_state(), state)
    with pytest.raises(mtkd.MtkdError, match="not the architecture 'cnn_small' builds"):
        mtkd.train(made, model="cnn_small", data="digits", epochs=1, out=tmp_path / "r3")
    assert not (tmp_path / "r3").exists()


def test_plain_torch_and_safetensors_load_an_mtkd_student(tmp_path):
    from safetensors.torch import load_file

    from mtkd.models.zoo import create_student

    run = mtkd.train("cnn_small", data="digits", epochs=1, out=tmp_path / "r", progress=False)
    model = create_student("cnn_small", num_classes=10, in_chans=1)
    model.load_state_dict(load_file(str(run.folder / "best.safetensors")))
    easy = mtkd.load_student(run)
    x = torch.rand(3, 1, 8, 8)
    mean, std = _stats(run)
    with torch.inference_mode():
        assert torch.allclose(easy(x), model.eval()((x - mean[0]) / std[0]), atol=1e-6)


@pytest.mark.parametrize("kind", ["mlflow", "wandb"])
def test_trackers_receive_the_epoch_metrics_and_a_resume_continues_their_run(kind, tmp_path):
    pytest.importorskip(kind)
    out = tmp_path / "r"
    opts = {"data": "digits", "out": out, "progress": False, "trackers": [kind], "log_every": 0}
    mtkd.train("cnn_small", epochs=2, **opts)
    first_id = yaml.safe_load((out / "trackers.json").read_text())[kind]
    import csv

    csv_acc = [float(r["val_acc"]) for r in csv.DictReader(open(out / "metrics.csv"))]
    assert len(csv_acc) == 2
    # A resumed run opens the same tracker run again.
    from mtkd.engine.config import OutputConfig
    from mtkd.engine.trackers import open_trackers

    (again,) = open_trackers(OutputConfig(dir=out, trackers=[kind]), out, {}, resuming=True)
    assert again.id == first_id
    again.close()
    if kind == "mlflow":
        import os

        from mlflow.tracking import MlflowClient

        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
        history = client.get_metric_history(first_id, "val_acc")
        assert [m.value for m in history] == pytest.approx(csv_acc)
        assert client.get_run(first_id).data.params["schedule.epochs"] == "2"
    else:
        values = [r["val/acc"] for r in _wandb_history(out) if "val/acc" in r]
        assert values == pytest.approx(csv_acc)
        sittings = sorted((out / "wandb").glob("offline-run-*"))
        assert len(sittings) == 2 and all(
            p.name.endswith(first_id) for p in sittings
        )  # one run, synced as one


def _wandb_history(folder) -> list[dict]:
    """History rows of a W&B offline run file, read independently of wandb's own reader: a
    7-byte header, then LevelDB-log records (crc32c 4, length 2, type 1) in 32 KiB blocks, each a
    wandb_internal_pb2.Record."""
    import json

    from wandb.proto import wandb_internal_pb2 as pb

    path = sorted((folder / "wandb").glob("offline-run-*/run-*.wandb"))[0]  # the first sitting's
    raw, rows, pending, at, block = path.read_bytes(), [], b"", 7, 32768
    while at + 7 <= len(raw):
        room = block - at % block
        if room < 7:
            at += room
            continue
        length, kind = int.from_bytes(raw[at + 4 : at + 6], "little"), raw[at + 6]
        if length == 0 and kind == 0:
            break
        pending += raw[at + 7 : at + 7 + length]
        at += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
                )
    return rows


def test_a_teacher_by_name_takes_its_own_input_size():
    from mtkd.data import load_dataset
    from mtkd.engine.builders import load_teachers
    from mtkd.engine.config import TeacherRef, build_config

    ds = load_dataset("digits")
    cfg = build_config(
        TrainConfig,
        overrides={"transfer.teachers": ["mobilenet_v2", {"name": "mobilenet_v2", "input_size": 48}]},
    )
    assert cfg.transfer.teachers[1] == TeacherRef(name="mobilenet_v2", input_size=48)
    own, small = load_teachers(cfg.transfer.teachers, ds, torch.device("cpu"))
    assert (own.net.input_size, small.net.input_size) == (224, 48)
    assert own.sha != small.sha  # another input size, another cache
    with torch.inference_mode():
        images = ds.train.images[:2].float() / 255
        assert small.net.prepare(images).shape == (2, 3, 48, 48)
    assert small.recorded == {"name": "mobilenet_v2", "input_size": 48}
    with pytest.raises(
        mtkd.MtkdError,
        match=r"bad value for 'transfer.teachers': teacher 0 \(mobilenet_v2\): input_size: must be greater than or equal to 16",
    ):
        build_config(
            TrainConfig, overrides={"transfer.teachers": [{"name": "mobilenet_v2", "input_size": 2}]}
        )
