"""The dataset store: an image folder decoded once, reused, checked, resumed after an interruption."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from mtkd.data import load_dataset
from mtkd.data.images import image_to_tensor, open_image
from mtkd.io import cache_dir


def _folder(root, per_class=600, size=12):
    rng = np.random.default_rng(1)
    for split, n in (("train", per_class), ("test", 40)):
        for cls in ("cat", "dog"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (size, size + 2, 3), dtype=np.uint8)).save(
                    d / f"{i:04d}.png"
                )
    return root


def _stores():
    return sorted(p for p in (cache_dir() / "stores").iterdir() if p.is_dir() and p.name != "headers")


def test_a_folder_is_decoded_once_into_a_store_that_later_runs_reuse(tmp_path, caplog, monkeypatch):
    root = _folder(tmp_path / "data")
    first = load_dataset(f"folder:{root}", image_size=10)
    before = set(_stores())
    assert all((p / "meta.json").is_file() for p in before)
    # The same images as decoding each file by hand (PIL, bilinear resize).
    by_hand = image_to_tensor(open_image(root / "test" / "dog" / "0007.png"), 3, (10, 10))
    assert (first.test.images[40 + 7] == by_hand).all()
    caplog.clear()
    import mtkd._decode

    opened = []
    real_header = mtkd._decode.header
    monkeypatch.setattr(mtkd._decode, "header", lambda p: opened.append(p) or real_header(p))
    again = load_dataset(f"folder:{root}", image_size=10)
    assert set(_stores()) == before and "decoding" not in caplog.text
    assert opened == []  # the headers were kept beside the stores: no file opened
    assert (again.train.images == first.train.images).all() and (again.test.labels == first.test.labels).all()
    # An edited file (new mtime) makes another store for its split only.
    path = root / "test" / "cat" / "0003.png"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    load_dataset(f"folder:{root}", image_size=10)
    assert len(set(_stores()) - before) == 1
    assert len(opened) == 1280  # the folder changed: every header read again (this process: under 4 blocks)


def test_a_damaged_store_is_rebuilt_and_an_interrupted_build_resumes(tmp_path, monkeypatch, caplog):
    import mtkd._decode

    root = _folder(tmp_path / "data")
    before = set(_stores()) if (cache_dir() / "stores").is_dir() else set()
    clean = load_dataset(f"folder:{root}", image_size=9)
    train_store = max(set(_stores()) - before, key=lambda p: (p / "images.npy").stat().st_size)
    raw = bytearray((train_store / "images.npy").read_bytes())
    raw[-5] ^= 0x10
    (train_store / "images.npy").write_bytes(bytes(raw))
    caplog.clear()
    rebuilt = load_dataset(f"folder:{root}", image_size=9)
    assert "truncated or altered; rebuilding" in caplog.text
    assert (rebuilt.train.images == clean.train.images).all()

    # Interrupt the build of another resolution after its first block, then run again.
    real, calls = mtkd._decode.decode_task, []

    def flaky(task):
        calls.append(len(task[0]))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(mtkd._decode, "decode_task", flaky)
    with pytest.raises(KeyboardInterrupt):
        load_dataset(f"folder:{root}", image_size=7)
    monkeypatch.setattr(mtkd._decode, "decode_task", real)
    caplog.clear()
    resumed = load_dataset(f"folder:{root}", image_size=7)
    assert "decoding 688 of 1200 images" in caplog.text  # 512 were done before the interruption
    direct = [
        image_to_tensor(open_image(root / "train" / c / f"{i:04d}.png"), 3, (7, 7))
        for c in ("cat", "dog")
        for i in range(600)
    ]
    everything = np.concatenate([resumed.train.images.numpy(), resumed.val.images.numpy()])
    assert len(everything) == 1200 and sorted(map(bytes, everything)) == sorted(
        bytes(t.numpy()) for t in direct
    )


def test_training_from_the_store_on_disk_equals_training_in_memory_and_reads_only_batches(
    tmp_path, monkeypatch
):
    import torch

    import mtkd
    from mtkd.data.store import StoredImages
    from mtkd.engine.config import config_difference

    root = _folder(tmp_path / "data", per_class=150, size=12)
    read = []
    real = StoredImages.__getitem__

    def counting(self, index):
        out = real(self, index)
        read.append(len(out))
        return out

    monkeypatch.setattr(StoredImages, "__getitem__", counting)
    options = dict(
        data=f"folder:{root}", image_size=10, epochs=2, batch_size=32, eval_batch_size=64, progress=False,
        teachers=[], methods=["none"],
    )  # fmt: skip
    disk = mtkd.train("cnn_small", out=tmp_path / "disk", in_memory=False, **options)
    assert read and max(read) <= 512  # batches, eval batches and statistics chunks: never a split
    assert sum(read) > 2 * 270  # every epoch read its batches from disk
    read.clear()
    memory = mtkd.train("cnn_small", out=tmp_path / "memory", in_memory=True, **options)
    assert sorted(read) == [80, 300]  # in memory: each split read whole, once
    assert disk.test_acc == memory.test_acc
    a, b = mtkd.load_student(disk), mtkd.load_student(memory)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    # The config does not record where the images were held: either run resumes the other's way.
    assert config_difference({"data": {"in_memory": False}}, {"data": {"in_memory": True}}) == ""


def test_a_teacher_is_shown_the_original_files_at_its_input_size(tmp_path, caplog):
    import torch
    import torch.nn.functional as F

    import mtkd
    from mtkd.data.augment import Augment
    from mtkd.teachers.cache import CacheSpec, build_cache, teacher_identity, teacher_images, view_params
    from mtkd.teachers.nets import TeacherNet, TeacherSpec

    root = _folder(tmp_path / "data", per_class=40, size=40)  # 40x42 photos, a store at 12x12
    ds = load_dataset(f"folder:{root}", image_size=12)
    teacher = TeacherNet(TeacherSpec("mobilenet_v2", input_size=32, head="gap", num_classes=2)).eval()
    source = teacher_images(ds.train, 32)
    assert source.reads_files and not teacher_images(ds.train, 12).reads_files
    spec = CacheSpec(views=2, padding=2, hflip=True, seed=3, dtype="float32", with_logits=False)
    cache = build_cache(teacher, teacher_identity(teacher), source, spec, torch.device("cpu"), "t")

    # By hand: each file opened with PIL, resized to 32x32; view 1 is view 1's crop scaled by 32/12.
    def by_pil(path):
        img = Image.open(path).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)

    clean = torch.stack([by_pil(f) for f in ds.train.files])
    crop = view_params(len(clean), 2, Augment(padding=2, hflip=True), 3, (12, 12))[1].crop
    p = round(2 * 32 / 12)
    padded = F.pad(clean, (p, p, p, p))
    view1 = []
    for i in range(len(clean)):
        y, x = (min(2 * p, round(int(d) * 32 / 12)) for d in (crop.dy[i], crop.dx[i]))
        img = padded[i, :, y : y + 32, x : x + 32]
        view1.append(img.flip(-1) if crop.flip[i] else img)
    with torch.inference_mode():
        want0 = teacher.pooled_and_logits(clean.float() / 255, False)[0]
        want1 = teacher.pooled_and_logits(torch.stack(view1).float() / 255, False)[0]
    assert torch.allclose(torch.from_numpy(cache.features[0]), want0, atol=1e-4)
    assert torch.allclose(torch.from_numpy(cache.features[1]), want1, atol=1e-4)
    with torch.inference_mode():  # not what the small copies, upscaled, would give
        small = teacher.pooled_and_logits(ds.train.images.float() / 255, False)[0]
    assert not torch.allclose(small, want0, atol=1e-2)

    # A student run with an ImageNet teacher at 32 px on this folder: the cache reads the files.
    caplog.clear()
    run = mtkd.train(
        "cnn_small", data=f"folder:{root}", image_size=12, epochs=1, out=tmp_path / "s", progress=False,
        teachers=[{"name": "mobilenet_v2", "input_size": 32}], methods=["features"], in_memory=False,
    )  # fmt: skip
    assert "the original files at 32px" in caplog.text and 0 <= run.test_acc <= 1
    # A probe fit reads the files too, and `evaluate` shows its teacher the same images.
    fitted = mtkd.fit_teacher(
        "mobilenet_v2", data=f"folder:{root}", image_size=12, input_size=32, epochs=1, out=tmp_path / "t",
        progress=False,
    )  # fmt: skip
    assert mtkd.evaluate(fitted)["top1"] == fitted.test_acc


def test_a_named_dataset_is_written_once_into_a_store_when_asked_and_trains_the_same(
    tmp_path, caplog, capsys
):
    """torchvision's sets and the other named datasets are read into memory; with
    data.in_memory false they are written into a store once and read from it batch by batch."""
    from safetensors.torch import load_file

    from conftest import run_cli
    from mtkd.data.store import StoredImages

    memory = load_dataset("digits")
    caplog.clear()
    disk = load_dataset("digits", in_memory=False)
    assert "writing" in caplog.text
    assert isinstance(disk.train.images, StoredImages) and isinstance(disk.test.images, StoredImages)
    for split in ("train", "val", "test"):
        a, b = memory.split(split), disk.split(split)
        assert torch.equal(a.images, b.images[:]) and torch.equal(a.labels, b.labels)
    assert (memory.mean, memory.std) == (disk.mean, disk.std)
    caplog.clear()
    load_dataset("digits", in_memory=False)
    assert "writing" not in caplog.text  # the store is reused
    weights = []
    for mode in ("true", "false"):
        out = tmp_path / mode
        code, _, err = run_cli(["train", "--dataset", "digits", "--epochs", "1", "--out", out, "--set",
                                f"data.in_memory={mode}", "--set", "output.progress=false"], capsys)  # fmt: skip
        assert code == 0, err
        weights.append(load_file(out / "best.safetensors"))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_blocks_written_direct_or_through_the_page_cache_are_the_same_store(tmp_path, monkeypatch):
    """A store's blocks of whole pages go to the disk with O_DIRECT (bypassing the page cache);
    where that is refused or a block is not whole pages, a plain write. Both give the same bytes,
    and the same pixels as decoding by hand."""
    import mtkd._decode

    root = _folder(tmp_path / "data", per_class=600, size=16)
    written = []
    real = mtkd._decode._write_direct
    monkeypatch.setattr(mtkd._decode, "_write_direct", lambda *a: written.append(real(*a)) or written[-1])
    direct = load_dataset(f"folder:{root}", image_size=16)  # 16x16x3: blocks of whole pages
    assert len(written) == 4  # train: 512 + 512 + 176 images, test: 80 (each a whole number of pages)
    probe = cache_dir() / "direct-probe"
    probe.write_bytes(b"")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_DIRECT))
        supported = True
    except OSError:
        supported = False
    assert all(w > 0 for w in written) == supported
    by_hand = image_to_tensor(open_image(root / "test" / "dog" / "0031.png"), 3, (16, 16))
    assert (direct.test.images[40 + 31] == by_hand).all()

    home1 = cache_dir()
    monkeypatch.setenv("MTKD_HOME", str(tmp_path / "home2"))
    monkeypatch.delattr(os, "O_DIRECT")
    written.clear()
    buffered = load_dataset(f"folder:{root}", image_size=16)
    assert written == []
    assert (buffered.train.images == direct.train.images).all() and (
        buffered.test.images == direct.test.images
    ).all()
    second = sorted((tmp_path / "home2" / "stores").glob("*/images.npy"))
    assert len(second) == 2
    for path in second:  # the same file, byte for byte (its data from byte 4096 on)
        assert path.read_bytes() == (home1 / "stores" / path.parent.name / "images.npy").read_bytes()


def test_a_build_whose_blocks_were_lost_after_their_record_is_decoded_again_not_trusted(tmp_path, caplog):
    """A lost page cache: progress.json survived, the blocks it records did not reach the disk
    (zeros). The resume reads each recorded block back, keeps the ones that match and decodes
    the rest; the run's weights equal those of a run on the undamaged store."""
    import json

    import mtkd

    root = _folder(tmp_path / "data", per_class=600, size=12)
    options = dict(data=f"folder:{root}", image_size=11, epochs=1, batch_size=64, progress=False,
                   in_memory=False, methods=["none"])  # fmt: skip
    before = set(_stores()) if (cache_dir() / "stores").is_dir() else set()
    clean = mtkd.train("cnn_small", out=tmp_path / "clean", **options)
    store = max(set(_stores()) - before, key=lambda p: (p / "images.npy").stat().st_size)
    meta = json.loads((store / "meta.json").read_text())
    assert meta["shape"][0] == 1200 and len(meta["blocks"]) == 3
    # Back to the state of a build interrupted after its last block was recorded, blocks 2 and 3 zeroed.
    (store / "images.npy").replace(store / "images.partial.npy")
    for name in ("meta.json", "checked.json", "labels.npy"):
        (store / name).unlink()
    (store / "progress.json").write_text(json.dumps({"blocks": meta["blocks"]}))
    row = 3 * 11 * 11
    with open(store / "images.partial.npy", "r+b") as fh:
        fh.seek(-(1200 - 512) * row, os.SEEK_END)
        fh.write(bytes((1200 - 512) * row))
    caplog.clear()
    again = mtkd.train("cnn_small", out=tmp_path / "again", **options)
    assert "2 of the 3 blocks an interrupted build recorded are not on disk" in caplog.text
    assert "decoding 688 of 1200 images" in caplog.text
    assert json.loads((store / "meta.json").read_text())["blocks"] == meta["blocks"]
    a, b = mtkd.load_student(clean), mtkd.load_student(again)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    # A record that is not a list of hashes, or more blocks than the file holds, starts afresh.
    (store / "images.npy").replace(store / "images.partial.npy")
    (store / "meta.json").unlink()
    (store / "progress.json").write_text(json.dumps({"blocks": meta["blocks"] * 5}))
    caplog.clear()
    mtkd.train("cnn_small", out=tmp_path / "third", **options)
    assert "cannot be read back; starting it again" in caplog.text and "decoding 1200 of 1200" in caplog.text
    (store / "images.npy").replace(store / "images.partial.npy")
    (store / "meta.json").unlink()
    (store / "progress.json").write_text('{"blocks": 3}')
    caplog.clear()
    mtkd.train("cnn_small", out=tmp_path / "fourth", **options)
    assert "cannot be read back; starting it again" in caplog.text and "decoding 1200 of 1200" in caplog.text
