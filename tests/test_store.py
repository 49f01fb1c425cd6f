"""The dataset store: an image folder decoded once, reused, checked, resumed after an interruption."""

from __future__ import annotations

import os

import numpy as np
import pytest
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
    return sorted(p for p in (cache_dir() / "stores").iterdir() if p.is_dir())


def test_a_folder_is_decoded_once_into_a_store_that_later_runs_reuse(tmp_path, caplog):
    root = _folder(tmp_path / "data")
    first = load_dataset(f"folder:{root}", image_size=10)
    before = set(_stores())
    assert all((p / "meta.json").is_file() for p in before)
    # The same images as decoding each file by hand (PIL, bilinear resize).
    by_hand = image_to_tensor(open_image(root / "test" / "dog" / "0007.png"), 3, (10, 10))
    assert (first.test.images[40 + 7] == by_hand).all()
    caplog.clear()
    again = load_dataset(f"folder:{root}", image_size=10)
    assert set(_stores()) == before and "decoding" not in caplog.text
    assert (again.train.images == first.train.images).all() and (again.test.labels == first.test.labels).all()
    # An edited file (new mtime) makes another store for its split only.
    path = root / "test" / "cat" / "0003.png"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    load_dataset(f"folder:{root}", image_size=10)
    assert len(set(_stores()) - before) == 1


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
