"""Students learning from teachers: cached and online teachers agree, caches are verified,
and the method's projectors stay out of the saved student."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli
from mtkd.data import load_dataset
from mtkd.data.augment import Augment
from mtkd.data.batches import Normalize
from mtkd.engine.builders import load_teachers
from mtkd.engine.config import TrainConfig, build_config
from mtkd.engine.transfer import build_methods, prepare_teachers, transfer_task
from mtkd.io import cache_dir
from mtkd.methods.base import Step
from mtkd.models.adapters import OutputsView
from mtkd.models.pretrained import OFFLINE_WEIGHTS
from mtkd.models.zoo import create_student
from mtkd.teachers.cache import CacheSpec, TeacherImages, _load, build_cache, images_for, view_params

pytestmark = pytest.mark.skipif(
    OFFLINE_WEIGHTS["mobilenet_v2"].path() is None, reason="offline MobileNetV2 needed"
)


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
    from mtkd.cli.main import main

    out = tmp_path_factory.mktemp("teacher") / "mnv2"
    main(["teacher", "fit", "--dataset", "digits", "--teacher", "mobilenet_v2", "--input-size", "32",
          "--epochs", "5", "--lr", "0.003", "--out", str(out)])  # fmt: skip
    return out


HINT = {"name": "hint", "student_layer": "features.4", "teacher_layer": "body.features.6", "student_channels": 32,
        "teacher_channels": [32], "adapter": "conv1x1"}  # fmt: skip
METHODS = ["features", "avg_kd", "camkd", HINT]


def _first_batch_terms(teacher_dir, mode, dtype):
    """The loss terms of one batch, every image shown as cached view 1 (online: the same crop and
    flip, given as the step's draw)."""
    cfg = build_config(
        TrainConfig,
        overrides={"data.name": "digits", "transfer.teachers": [str(teacher_dir)], "transfer.teacher_mode": mode,
                   "transfer.methods": METHODS, "transfer.views": 2, "transfer.cache_dtype": dtype},
    )  # fmt: skip
    ds = load_dataset("digits")
    dev = torch.device("cpu")
    torch.manual_seed(0)
    student = create_student("cnn_small", 10, 1)
    teachers = load_teachers(cfg.transfer.teachers, ds, dev)
    methods = build_methods(cfg, student.num_features, teachers, 10)
    view = OutputsView(student)
    prepare_teachers(teachers, methods, ds, cfg, False, dev)
    task = transfer_task(student, view, methods, teachers, ds, Normalize(ds.mean, ds.std), cfg, False, dev)
    index = torch.arange(32)
    drawn = torch.ones(len(index), dtype=torch.long)
    if mode == "online":
        augment = Augment(padding=cfg.train.crop_padding)
        drawn = view_params(len(ds.train.images), 2, augment, cfg.transfer.view_seed, ds.image_size)[1][index]
    step = Step(epoch=2)  # camkd's feature term starts in epoch 2
    _, terms = task.loss(task.trainable, index, ds.train.images[index], ds.train.labels[index], drawn, step)
    return {k: v.item() for k, v in terms.items()}


def test_a_cache_with_one_flipped_byte_is_rebuilt(digits_teacher):
    ds = load_dataset("digits")
    teachers = load_teachers([str(digits_teacher)], ds, torch.device("cpu"))
    t = teachers[0]
    spec = CacheSpec(views=2, padding=2, hflip=False, seed=5, dtype="float32", with_logits=True)
    args = (t.net, t.sha, TeacherImages(ds.train.images, ds.train.labels), spec, torch.device("cpu"), "t")
    cache = build_cache(*args)
    path = cache.folder / "features.npy"
    good = np.array(cache.features)
    raw = bytearray(path.read_bytes())
    raw[-7] ^= 0x01
    path.write_bytes(bytes(raw))
    assert _load(cache.folder) is None  # detected
    rebuilt = build_cache(*args)
    assert np.array_equal(np.array(rebuilt.features), good)


def test_projectors_stay_out_of_the_saved_student(digits_teacher, tmp_path, capsys):
    out = tmp_path / "student"
    code, _, err = run_cli(
        ["train", "--dataset", "digits", "--teachers", f"[{digits_teacher}]", "--methods", "[features, kd]",
         "--epochs", "2", "--out", out],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    saved = load_file(str(out / "best.safetensors"))
    bare = create_student("cnn_small", 10, 1)
    assert set(saved) == set(bare.state_dict())
    bare.load_state_dict(saved, strict=True)
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert "train_features" in header and "train_kd" in header and "train_ce" in header
    assert "extra" in torch.load(out / "last.state.pt", weights_only=True)
    assert json.loads((out / "summary.json").read_text())["params"] == 24058


def test_hint_and_camkd_train_from_cached_maps(digits_teacher, tmp_path, capsys):
    hint = ("{name: hint, student_layer: features.4, teacher_layer: body.features.6, student_channels: 32, "
            "teacher_channels: [32], adapter: conv1x1, weight: 1}")  # fmt: skip
    args = ["train", "--dataset", "digits", "--teachers", f"[{digits_teacher}]", "--methods", f"[{hint}, camkd]",
            "--epochs", "2", "--set", "transfer.views=2", "--out", tmp_path / "run"]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    header, first, second = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[:3]
    columns = header.split(",")
    assert {"train_hint", "train_camkd", "train_camkd_features"} <= set(columns)
    at = columns.index("train_camkd_features")
    assert first.split(",")[at] == "" and float(second.split(",")[at]) > 0  # from epoch 2 on
    caches = [json.loads(p.read_text()) for p in cache_dir().glob("teachers/*/meta.json")]
    assert any(sorted(c.get("maps", [])) == ["body", "body.features.6"] for c in caches)


def test_hint_reads_each_teacher_at_its_own_layer(digits_teacher, tmp_path, capsys):
    """teacher_layer (and teacher_size) may name one path per teacher: each teacher's cache holds
    only its own map."""
    hint = ("{name: hint, student_layer: features.4, teacher_layer: [body.features.6, body.features.3], "
            "student_channels: 32, teacher_channels: [32, 24], adapter: conv1x1, weight: 1}")  # fmt: skip
    teachers = f"[{digits_teacher}, {{name: mobilenet_v2, input_size: 32}}]"
    args = ["train", "--dataset", "digits", "--teachers", teachers, "--methods", f"[{hint}]", "--epochs", "1",
            "--set", "transfer.views=2", "--out", tmp_path / "run"]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    maps = [json.loads(p.read_text()).get("maps") for p in cache_dir().glob("teachers/*/meta.json")]
    assert ["body.features.6"] in maps and ["body.features.3"] in maps


@pytest.mark.parametrize(("layers", "message"), [
    ("[body.features.6]", "teacher_layer lists 1 values for 2 teachers (teacher_channels)"),
    ("[body.features.6, features.3]", "no module 'features.3' in TeacherNet (nearest: body.features.3, "),
])  # fmt: skip
def test_hint_refuses_bad_teacher_layers_before_any_cache(digits_teacher, tmp_path, capsys, layers, message):
    hint = (f"{{name: hint, student_layer: features.4, teacher_layer: {layers}, student_channels: 32, "
            "teacher_channels: [32, 24], adapter: conv1x1}")  # fmt: skip
    teachers = f"[{digits_teacher}, {{name: mobilenet_v2, input_size: 32}}]"
    before = sorted(cache_dir().glob("teachers/*"))
    args = ["train", "--dataset", "digits", "--teachers", teachers, "--methods", f"[{hint}]", "--epochs", "1",
            "--set", "transfer.views=3", "--out", tmp_path / "run"]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert sorted(cache_dir().glob("teachers/*")) == before and not (tmp_path / "run").exists()


def test_a_student_layer_that_does_not_exist_is_refused_before_any_cache(digits_teacher, tmp_path, capsys):
    hint = ("{name: hint, student_layer: feature.4, teacher_layer: body.features.6, student_channels: 32, "
            "teacher_channels: [32], adapter: conv1x1}")  # fmt: skip
    before = sorted(cache_dir().glob("teachers/*"))
    args = ["train", "--dataset", "digits", "--teachers", f"[{digits_teacher}]", "--methods", f"[{hint}]",
            "--set", "transfer.views=4", "--out", tmp_path / "run"]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "student: no module 'feature.4' in " in err and "nearest: features.4" in err
    assert sorted(cache_dir().glob("teachers/*")) == before and not (tmp_path / "run").exists()


def _cache_build(teacher, views: int, seed: int):
    """(digits, build_cache's arguments) for the teacher's cache of `views` views."""
    ds = load_dataset("digits")
    t = load_teachers([str(teacher)], ds, torch.device("cpu"))[0]
    spec = CacheSpec(views=views, padding=2, hflip=True, seed=seed, dtype="float32", with_logits=True)
    return ds, (t.net, t.sha, TeacherImages(ds.train.images, ds.train.labels), spec, torch.device("cpu"), "t")


def _killed_after_chunks(monkeypatch, module, n: int):
    """A kill right after the build records its n-th chunk (progress.json); returns the real writer."""
    calls = {"n": 0}
    original = module.write_json

    def crash(path, obj):
        original(path, obj)
        if path.name == "progress.json":
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt

    monkeypatch.setattr(module, "write_json", crash)
    return original


def test_an_interrupted_cache_build_resumes_to_the_same_cache(digits_teacher, monkeypatch):
    from mtkd.teachers import cache as teacher_cache

    ds, args = _cache_build(digits_teacher, views=3, seed=9)
    monkeypatch.setattr(teacher_cache, "CHUNK", 200)
    original = _killed_after_chunks(monkeypatch, teacher_cache, 2)
    with pytest.raises(KeyboardInterrupt):
        build_cache(*args)
    monkeypatch.setattr(teacher_cache, "write_json", original)
    resumed = build_cache(*args)
    shutil.rmtree(resumed.folder)
    fresh = build_cache(*args)
    assert np.array_equal(np.array(resumed.features), np.array(fresh.features))
    assert np.array_equal(np.array(resumed.logits), np.array(fresh.logits))


def test_a_cache_build_whose_rows_were_lost_after_their_record_computes_them_again(
    digits_teacher, monkeypatch, caplog
):
    """A lost page cache: progress.json records 3 chunks, the second and third are zeros in the
    files. The resume checks each recorded chunk, keeps the first and computes the rest: the cache
    equals a fresh build's, bit for bit."""
    from mtkd.teachers import cache as teacher_cache

    ds, args = _cache_build(digits_teacher, views=2, seed=4)
    monkeypatch.setattr(teacher_cache, "CHUNK", 200)
    original = _killed_after_chunks(monkeypatch, teacher_cache, 3)
    before = set(cache_dir().glob("teachers/*/progress.json"))
    with pytest.raises(KeyboardInterrupt):
        build_cache(*args)
    monkeypatch.setattr(teacher_cache, "write_json", original)
    (folder,) = [p.parent for p in set(cache_dir().glob("teachers/*/progress.json")) - before]
    assert len(json.loads((folder / "progress.json").read_text())["chunks"]) == 3
    for path in folder.glob("*.partial.npy"):
        arr = np.lib.format.open_memmap(path, mode="r+")
        arr[0, 200:600] = 0  # chunks 2 and 3 of view 0 never reached the disk
        arr.flush()
        del arr
    caplog.clear()
    resumed = build_cache(*args)
    assert "2 of the 3 chunks an interrupted build recorded are not in its files" in caplog.text
    assert f"({2 * len(ds.train) - 200} forward passes left" in caplog.text
    got = np.array(resumed.features), np.array(resumed.logits)
    shutil.rmtree(resumed.folder)
    fresh = build_cache(*args)
    assert np.array_equal(got[0], np.array(fresh.features)) and np.array_equal(got[1], np.array(fresh.logits))


def test_a_teacher_is_cached_under_its_content_never_its_name(digits_teacher, tmp_path):
    """Same architecture and weights: one key, however loaded; one changed weight, another input
    size or another thread count: another cache."""
    from mtkd.teachers.cache import cache_key, computed_by, teacher_identity
    from mtkd.teachers.nets import TeacherNet, TeacherSpec

    ds = load_dataset("digits")
    (t,) = load_teachers([str(digits_teacher)], ds, torch.device("cpu"))
    (again,) = load_teachers([str(digits_teacher)], ds, torch.device("cpu"))
    assert t.sha == again.sha == teacher_identity(t.net)
    copy = tmp_path / "renamed-teacher"
    shutil.copytree(digits_teacher, copy)
    assert load_teachers([str(copy)], ds, torch.device("cpu"))[0].sha == t.sha
    with torch.no_grad():
        again.net.head[1].bias[0] += 1e-6
    assert teacher_identity(again.net) != t.sha
    plain = TeacherNet(TeacherSpec("mobilenet_v2", head="imagenet"))
    assert teacher_identity(plain) != teacher_identity(
        TeacherNet(TeacherSpec("mobilenet_v2", head="imagenet", input_size=96))
    )
    assert teacher_identity(plain) == teacher_identity(
        TeacherNet(TeacherSpec("mobilenet_v2", head="imagenet"))
    )
    before = torch.get_num_threads()
    try:
        keys = set()
        for threads in (1, 2):
            torch.set_num_threads(threads)
            keys.add(
                cache_key(t.sha, "d", 2, Augment(padding=2), 0, "float16", computed_by(torch.device("cpu")))
            )
    finally:
        torch.set_num_threads(before)
    assert len(keys) == 2


def test_view_0_comes_from_the_probe_fits_features_with_the_same_bits(digits_teacher, monkeypatch):
    """The probe fit cached the clean training images' pooled features under the backbone; a
    student's teacher cache takes view 0 from them (only view 1 goes through the backbone) and
    holds the same bits as a cache computed from the images."""
    from mtkd.teachers import cache as teacher_cache

    ds = load_dataset("digits")
    t = load_teachers([str(digits_teacher)], ds, torch.device("cpu"))[0]
    spec = CacheSpec(views=2, padding=2, hflip=False, seed=5, dtype="float32", with_logits=True)
    args = (t.net, t.sha, TeacherImages(ds.train.images, ds.train.labels), spec, torch.device("cpu"), "t")
    shutil.rmtree(build_cache(*args).folder)  # whatever built it before: built here, now
    seen = []
    hook = t.net.body.register_forward_hook(lambda m, x, y: seen.append(len(x[0])))
    reused = build_cache(*args)
    assert seen[0] == 1 and sum(seen[1:]) == len(ds.train.images)  # a shape probe, then one view, not two
    shutil.rmtree(reused.folder)
    monkeypatch.setattr(teacher_cache, "_clean_view", lambda *a: None)
    seen.clear()
    fresh = build_cache(*args)
    hook.remove()
    assert sum(seen[1:]) == 2 * len(ds.train.images)
    for name in ("features", "logits"):
        assert np.array_equal(np.asarray(reused.arrays[name]), np.asarray(fresh.arrays[name])), name


def test_cached_views_are_chosen_on_the_host_whatever_the_images_device():
    """The rows shown as each view are picked with the step's CPU draw and index, and the images
    stay on their own device (here `meta`: no data, but a device check on every operation, as on
    CUDA): the output is on the images' device, and equals the CPU result in shape."""
    augment = Augment(padding=2, hflip=True)
    params = view_params(10, 3, augment, 0, (8, 8))
    index = torch.tensor([1, 5, 7, 9])
    views = torch.tensor([0, 1, 2, 1])
    out = images_for(torch.zeros(4, 1, 8, 8, dtype=torch.uint8, device="meta"), index, views, params)
    assert out.device.type == "meta" and out.shape == (4, 1, 8, 8)
    cpu = images_for(torch.arange(256, dtype=torch.uint8).view(4, 1, 8, 8), index, views, params)
    want = params[1][index[1:2]].apply(torch.arange(64, 128, dtype=torch.uint8).view(1, 1, 8, 8))
    assert torch.equal(cpu[1:2], want) and torch.equal(
        cpu[0], torch.arange(64, dtype=torch.uint8).view(1, 8, 8)
    )


REVIEWKD = ("{name: reviewkd, student_layers: [features.4, features.8], "
            "teacher_layers: [body.features.3, body.features.6], warmup_epochs: 1}")  # fmt: skip


@pytest.mark.parametrize("method", ["crd", REVIEWKD, "mtkd_rl"], ids=["crd", "reviewkd", "mtkd_rl"])
def test_stateful_methods_resume_to_the_same_bits(method, digits_teacher, tmp_path, monkeypatch, capsys):
    """A run stopped in the middle of epoch 2 and resumed ends with the weights, and the method's
    state (CRD's memory banks and Z; MTKD-RL's agent and the batches it keeps until it learns), of
    the run that was never stopped: the state is in the resume state and each step's draws are a
    function of (seed, epoch, step)."""
    from mtkd.engine import trainer as trainer_module

    args = ["train", "--dataset", "digits", "--teachers", f"[{digits_teacher}, {digits_teacher}]", "--methods",
            f"[{method}]", "--epochs", "2", "--set", "transfer.views=2", "--set", "output.tensorboard=false"]  # fmt: skip
    code, _, err = run_cli([*args, "--out", tmp_path / "whole"], capsys)
    assert code == 0, err
    calls = {"n": 0}

    def stop_in_epoch_2(self, step):
        calls["n"] += 1
        return calls["n"] == self.steps_per_epoch + 5  # once 5 steps of epoch 2 are done

    monkeypatch.setattr(trainer_module.Trainer, "_stop_requested", stop_in_epoch_2)
    code, _, err = run_cli([*args, "--out", tmp_path / "killed"], capsys)
    assert code == 128 + 15 and "epoch 2, step 5/" in err, err
    monkeypatch.undo()
    if method == "mtkd_rl":  # the batches the agent has not learnt from yet are in the saved state
        kept = torch.load(tmp_path / "killed" / "last.state.pt", weights_only=True)["extra"]["0._extra_state"]
        assert len(kept["states"]) == len(kept["rewards"]) == 5  # the 5 steps of epoch 2 done
    code, _, err = run_cli([*args, "--out", tmp_path / "killed", "--resume"], capsys)
    assert code == 0, err
    a, b = (
        load_file(str(tmp_path / "whole" / "last.safetensors")),
        load_file(str(tmp_path / "killed" / "last.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state_a = torch.load(tmp_path / "whole" / "last.state.pt", weights_only=True)["extra"]
    state_b = torch.load(tmp_path / "killed" / "last.state.pt", weights_only=True)["extra"]
    tensors = [k for k in state_a if isinstance(state_a[k], torch.Tensor)]
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in tensors)
    if method == "crd":
        assert {"0.bank_s0", "0.bank_t1", "0.z"} <= set(state_a) and (state_a["0.z"] > 0).all()
    elif method == "mtkd_rl":  # the agent learnt at the end of each epoch: nothing kept at the end
        assert "0.agent.stem.0.weight" in state_a and state_a["0._extra_state"]["states"] == []
    else:  # the ABF stacks, sized from the maps when the run started, trained from epoch 2
        assert "0.stacks.1.2.conv2.0.weight" in state_a
        rows = (tmp_path / "whole" / "metrics.csv").read_text().splitlines()
        at = rows[0].split(",").index("train_reviewkd")
        assert float(rows[1].split(",")[at]) == 0 and float(rows[2].split(",")[at]) > 0


def test_crd_reviewkd_and_mtkd_rl_train_with_online_teachers(digits_teacher, tmp_path, capsys):
    """Online, the maps' shapes come from one pass of the teacher (no cache to read them from)."""
    args = ["train", "--dataset", "digits", "--teachers", f"[{digits_teacher}, {digits_teacher}]", "--methods",
            f"[crd, {REVIEWKD}, mtkd_rl]", "--epochs", "1", "--set", "transfer.teacher_mode=online",
            "--set", "output.tensorboard=false", "--out", tmp_path / "run"]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    header, first = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[:2]
    values = dict(zip(header.split(","), first.split(","), strict=True))
    assert (
        float(values["train_crd"]) > 0 and float(values["train_reviewkd"]) == 0
    )  # reviewkd: weight 0 in epoch 1
