import gzip

import numpy as np
import pytest
import torch

from mtkd.data import load_dataset
from mtkd.data.base import deduplicate, image_hashes, stratified_split
from mtkd.data.batches import random_crop_flip
from mtkd.data.sources import animal_mnist_files, fashion_mnist_dir, read_idx
from mtkd.errors import MtkdError


def test_deduplicate_keeps_first_copy_and_drops_conflicting_labels():
    a, b, c = (np.full((2, 2), v, np.uint8) for v in (1, 2, 3))
    images = np.stack([a, b, a, c, b, a])
    labels = np.array([0, 1, 0, 2, 5, 0])  # b appears with labels 1 and 5: ambiguous
    assert deduplicate(images, labels).tolist() == [0, 3]


def test_stratified_split_is_disjoint_seeded_and_stratified():
    labels = np.repeat(np.arange(4), 25)
    rest, part = stratified_split(labels, 0.2, seed=3)
    assert set(rest).isdisjoint(part) and len(rest) + len(part) == 100
    assert np.bincount(labels[part]).tolist() == [5, 5, 5, 5]
    assert stratified_split(labels, 0.2, seed=3)[1].tolist() == part.tolist()
    assert stratified_split(labels, 0.2, seed=4)[1].tolist() != part.tolist()


def _all_hashes(ds):
    return {s: set(image_hashes(ds.split(s).images.numpy())) for s in ("train", "val", "test")}


@pytest.mark.skipif(animal_mnist_files() is None, reason="animal-mnist package not installed")
def test_animal_mnist_deduplicated_splits():
    ds = load_dataset("animal-mnist")
    sizes = [len(ds.train), len(ds.val), len(ds.test)]
    assert sum(sizes) == 9716  # 10,000 images less 284 exact duplicates
    assert ds.image_size == (28, 28) and ds.channels == 1 and ds.train.images.dtype == torch.uint8
    assert ds.classes[6] == "giraffe" and ds.num_classes == 10
    h = _all_hashes(ds)
    assert sum(len(v) for v in h.values()) == 9716  # no duplicate left inside or across splits
    assert (
        h["train"].isdisjoint(h["test"])
        and h["val"].isdisjoint(h["test"])
        and h["train"].isdisjoint(h["val"])
    )
    # stratified: each class is ~20% test
    counts = torch.bincount(torch.cat([ds.train.labels, ds.val.labels, ds.test.labels]), minlength=10)
    test_counts = torch.bincount(ds.test.labels, minlength=10)
    assert torch.all((test_counts.float() / counts - 0.2).abs() < 0.01)
    # the saved split gives the same test set again
    assert torch.equal(load_dataset("animal-mnist").test.images, ds.test.images)


@pytest.mark.skipif(fashion_mnist_dir(None) is None, reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_official_split():
    ds = load_dataset("fashion-mnist", val_fraction=0.1)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (54000, 6000, 10000)
    assert torch.bincount(ds.test.labels).tolist() == [1000] * 10
    assert ds.train.images.shape[1:] == (1, 28, 28)


def test_digits_shapes():
    ds = load_dataset("digits", val_fraction=0.1)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 1797
    assert ds.train.images.shape[1:] == (1, 8, 8) and int(ds.train.images.max()) == 255


def test_read_idx_roundtrip_and_truncation(tmp_path):
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in data.shape)
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(header + data.tobytes()))
    assert np.array_equal(read_idx(path), data)
    path.write_bytes(gzip.compress(header + data.tobytes()[:-1]))
    with pytest.raises(MtkdError, match="truncated"):
        read_idx(path)


def test_random_crop_flip_matches_slices_of_the_padded_image():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).view(2, 1, 4, 4)
    gen = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, 1, False, gen)
    gen = torch.Generator().manual_seed(0)
    dy, dx = torch.randint(0, 3, (2,), generator=gen), torch.randint(0, 3, (2,), generator=gen)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(2):
        assert torch.equal(out[i], padded[i, :, dy[i] : dy[i] + 4, dx[i] : dx[i] + 4])
    flipped = random_crop_flip(x, 0, True, torch.Generator().manual_seed(1))
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(6):
                Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(
                    tmp_path / split / cls / f"{i}.png"
                )
    ds = load_dataset(f"folder:{tmp_path}", val_fraction=0.34)
    assert ds.classes == ["a", "b"] and ds.channels == 3 and ds.image_size == (10, 12)
    assert len(ds.test) == 12 and len(ds.train) + len(ds.val) == 12
    (tmp_path / "train" / "c").mkdir()
    with pytest.raises(MtkdError, match="no images"):
        load_dataset(f"folder:{tmp_path}")


def test_train_size_keeps_a_stratified_part_of_train_only():
    from mtkd.engine.config import DataConfig
    from mtkd.engine.run import open_dataset
    from mtkd.errors import MtkdError

    whole = open_dataset(DataConfig(name="digits"))
    part = open_dataset(DataConfig(name="digits", train_size=300))
    assert len(part.train.labels) == 300
    assert torch.equal(part.val.labels, whole.val.labels) and torch.equal(part.test.labels, whole.test.labels)
    counts, full = torch.bincount(part.train.labels), torch.bincount(whole.train.labels)
    assert ((counts - full * 300 / len(whole.train.labels)).abs() <= 1).all()  # every class in proportion
    rows = {tuple(r.flatten().tolist()) for r in whole.train.images}
    assert all(tuple(r.flatten().tolist()) in rows for r in part.train.images)  # rows of train, not val/test
    again = open_dataset(DataConfig(name="digits", train_size=300))
    assert torch.equal(again.train.images, part.train.images)
    assert part.mean != whole.mean  # the statistics of the images it trains on
    with pytest.raises(
        MtkdError, match="data.train_size 5000 is not below the 1212 training images of digits"
    ):
        open_dataset(DataConfig(name="digits", train_size=5000))
