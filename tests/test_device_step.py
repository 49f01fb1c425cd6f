"""The training step on a device the host cannot read: `meta` tensors have shapes and devices but
no data, and every operation checks that its tensors share a device (as on CUDA). A step that reads
a value on the host (`.item()`, `bool(tensor)`) or mixes a CPU tensor into the device's work fails
there; so this runs on the CPU what a GPU run depends on, for each kind of transfer."""

from __future__ import annotations

import pytest
import torch

from mtkd.data import load_dataset
from mtkd.data.batches import Normalize, fetched
from mtkd.engine.builders import load_teachers
from mtkd.engine.config import (
    LoopConfig,
    OptimConfig,
    OutputConfig,
    ScheduleConfig,
    TrainConfig,
    build_config,
)
from mtkd.engine.readings import Readings
from mtkd.engine.trainer import FitData, Trainer
from mtkd.engine.transfer import build_methods, prepare_teachers, transfer_task
from mtkd.models.adapters import OutputsView
from mtkd.models.pretrained import OFFLINE_WEIGHTS
from mtkd.models.zoo import create_student

META = torch.device("meta")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from mtkd.cli.main import main

    out = tmp_path_factory.mktemp("teacher") / "mnv2"
    main(["teacher", "fit", "--dataset", "digits", "--teacher", "mobilenet_v2", "--input-size", "32",
          "--epochs", "2", "--out", str(out), "--set", "output.progress=false"])  # fmt: skip
    return str(out)


def _trainer(tmp_path, methods, mode, teacher):
    cfg = build_config(TrainConfig, overrides={
        "data.name": "digits", "transfer.teachers": [teacher], "transfer.methods": methods,
        "transfer.teacher_mode": mode, "transfer.views": 2, "output.dir": str(tmp_path / "run"),
    })  # fmt: skip
    ds = load_dataset("digits")
    torch.manual_seed(0)
    student = create_student("cnn_small", 10, 1)
    teachers = load_teachers(cfg.transfer.teachers, ds, CPU)
    built = build_methods(cfg, student.num_features, teachers, 10)
    # Caches are built on the CPU (meta tensors cannot compute them), then the step moves to meta.
    prepare_teachers(teachers, built, ds, cfg, True, CPU)
    task = transfer_task(student, OutputsView(student), built, teachers, ds, Normalize(ds.mean, ds.std), cfg,
                         True, CPU)  # fmt: skip
    task.trainable.to(META)
    task.loss.to(META)
    if mode == "online":
        for t in teachers:
            t.net.to(META)
    data = FitData(ds.train.images, ds.train.labels, ds.val.images, ds.val.labels)
    loop = LoopConfig(batch_size=32)
    out = OutputConfig(dir=tmp_path / "run", tensorboard=False, progress=False)
    trainer = Trainer(task, data, OptimConfig(), ScheduleConfig(epochs=2), loop, out, {}, META)
    return trainer, teachers


@pytest.mark.skipif(OFFLINE_WEIGHTS["mobilenet_v2"].path() is None, reason="offline MobileNetV2 needed")
@pytest.mark.parametrize(("methods", "mode"), [
    (["features", "kd"], "cached"),
    (["camkd"], "cached"),
    ([{"name": "camkd", "distance": "smooth_l1", "feature": "pooled"}, "avg_kd"], "online"),
])  # fmt: skip
def test_steps_run_on_the_device_without_reading_it(tmp_path, fitted, methods, mode):
    trainer, teachers = _trainer(tmp_path, methods, mode, fitted)
    assert trainer.data.train_x.device == META and trainer.data.train_y.device == META
    if mode == "cached":  # the teachers' backbones left the device once cached
        for t in teachers:
            assert all(p.device == CPU for p in t.net.body.parameters())
            assert t.cache is not None and all(v.device == META for v in t.cache._rows.values())
    gen = torch.Generator().manual_seed(0)
    x, y = trainer.data.train_x, trainer.data.train_y
    order = [torch.randperm(len(y), generator=gen)[:32] for _ in range(3)]
    readings = Readings()
    for step, (index, batch) in enumerate(zip(order, fetched(x, order), strict=True)):
        drawn = trainer.task.loss.draw(len(index), gen)
        terms, logits, target = trainer._step(2, step, index, batch, y, drawn)
        readings.add(step, terms, logits, target)
        assert logits.device == META and all(t.device == META for t in terms.values())
    assert len(readings) == 3  # kept on the device: the host has read nothing
    assert all(p.device == META for p in trainer.task.trainable.parameters())


def _train(tmp_path, name, capsys, *extra):
    from conftest import run_cli

    run = tmp_path / name
    code, _, err = run_cli(["train", "--dataset", "digits", "--epochs", "2", "--out", run, "--set",
                            "output.tensorboard=false", "--set", "output.log_every=3", *extra], capsys)  # fmt: skip
    return run, code, err


def test_reading_the_steps_every_few_steps_gives_the_same_numbers(tmp_path, monkeypatch, capsys):
    """What a GPU run does (the host reads the steps once per interval) gives the same metrics,
    step rows and weights as reading every step, and reads the device once per interval."""
    import csv

    from safetensors.torch import load_file

    import mtkd.engine.readings as readings
    import mtkd.engine.trainer as trainer

    every_step, code, _ = _train(tmp_path, "every", capsys)
    assert code == 0
    reads = []
    original = readings.Readings.read
    monkeypatch.setattr(trainer, "read_interval", lambda device, log_every: 5)
    monkeypatch.setattr(
        readings.Readings, "read", lambda self, *a: reads.append(len(self)) or original(self, *a)
    )
    batched, code, _ = _train(tmp_path, "batched", capsys)
    assert code == 0
    steps = 1212 // 128  # digits' training split, batch 128
    assert reads == [5, steps - 5] * 2  # every 5 steps and at the end of each epoch

    def rows(run, name, drop=("train_ips", "train_seconds")):
        with open(run / name) as fh:
            return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(fh)]

    for name in ("metrics.csv", "steps.csv"):
        assert rows(every_step, name) == rows(batched, name) and rows(batched, name)
    a, b = load_file(every_step / "last.safetensors"), load_file(batched / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_non_finite_term_read_late_still_names_its_step(tmp_path, monkeypatch, capsys):
    import mtkd.engine.trainer as trainer

    monkeypatch.setattr(trainer, "read_interval", lambda device, log_every: 4)
    run, code, err = _train(tmp_path, "nan", capsys, "--lr", "10", "--epochs", "3", "--set",
                            "optim.momentum=0.99", "--set", "optim.weight_decay=0.9")  # fmt: skip
    assert code == 2
    assert "loss term 'ce' is nan at epoch 2, step 7; stopped" in err.strip().splitlines()[-1]


def test_auto_precision_is_settled_at_the_start_and_kept_on_resume(tmp_path, monkeypatch, capsys):
    """A run started where `auto` meant bf16 (a GPU; faked here) resumes in bf16 on a machine where
    `auto` means fp32, ending with the weights of an uninterrupted bf16 run; fp16 is refused on
    the CPU in one line."""
    import yaml
    from safetensors.torch import load_file

    import mtkd.engine.run as run_module
    import mtkd.engine.trainer as trainer_module
    from mtkd.engine.config import TrainConfig, build_config
    from mtkd.errors import MtkdError

    whole, code, _ = _train(tmp_path, "whole", capsys, "--set", "train.precision=bf16")
    assert code == 0
    monkeypatch.setattr(run_module, "precision_name", lambda name, device: "bf16" if name == "auto" else name)
    calls = []  # stopped as by a signal at epoch 2, step 3
    monkeypatch.setattr(
        trainer_module.Trainer, "_stop_requested", lambda self, step: calls.append(step) or len(calls) == 12
    )
    part, code, _ = _train(tmp_path, "part", capsys)
    assert code != 0 and yaml.safe_load((part / "config.yaml").read_text())["train"]["precision"] == "bf16"
    monkeypatch.undo()
    _, code, err = _train(tmp_path, "part", capsys, "--resume")
    assert code == 0, err
    a, b = load_file(whole / "last.safetensors"), load_file(part / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    _, code, err = _train(
        tmp_path, "part", capsys, "--resume", "--epochs", "3", "--set", "train.precision=fp32"
    )
    assert code == 2 and "it was trained with train.precision=bf16" in err.strip().splitlines()[-1]

    import json

    from mtkd.engine.checkpoint import content_hash

    (tmp_path / "fp16").mkdir()  # the checkpoint of a run trained in fp16 (on a GPU)
    meta = json.loads((whole / "last.json").read_text())
    meta["config"]["train"]["precision"] = "fp16"
    meta["content_sha256"] = content_hash(meta)
    (tmp_path / "fp16" / "last.json").write_text(json.dumps(meta))
    cfg = build_config(TrainConfig, overrides={"output.dir": str(tmp_path / "fp16")})
    with pytest.raises(MtkdError, match="trained in fp16 on a GPU; resume it on one"):
        run_module.settle_precision(cfg, True, CPU)


def test_a_checkpoint_from_a_machine_with_more_gpus_restores_the_generators_it_can(monkeypatch):
    from mtkd.engine.trainer import restore_cuda_rng

    restored = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda state, device: restored.append((int(state[0]), device))
    )
    restore_cuda_rng([torch.tensor([7], dtype=torch.uint8), torch.tensor([9], dtype=torch.uint8)])
    assert restored == [(7, 0)]
