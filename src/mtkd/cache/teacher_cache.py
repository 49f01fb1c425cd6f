"""The teacher cache: pooled features and logits of a frozen teacher for V views of every image.

A cache is identified by a key made of the teacher's weights hash, the images' content hash,
the view parameters and the storage dtype, and lives in `$MTKD_HOME/cache/<key>/` as .npy
files read through memory maps. View 0 is the clean image; view v > 0 is a random crop/flip
whose parameters are drawn from a generator seeded with (seed, v), so the student can be given
exactly the image each cached output came from.

Building shows progress, can be interrupted and resumes where it stopped (`progress.json`);
the finished files' sizes and SHA-256 are recorded in `meta.json`, written last, and checked
on every load: a truncated or altered cache is rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mtkd.console import Milestones, make_progress, say
from mtkd.data.batches import CropFlip, apply_crop_flip, batch_indices, draw_crop_flip
from mtkd.io import cache_dir, file_lock, read_json, sha256_file, write_json
from mtkd.models.teachers import TeacherNet

CHUNK = 256


def view_params(n: int, views: int, padding: int, hflip: bool, seed: int) -> list[CropFlip | None]:
    """Augmentation parameters of each view (None for the clean view 0)."""
    out: list[CropFlip | None] = [None]
    for v in range(1, views):
        out.append(draw_crop_flip(n, padding, hflip, torch.Generator().manual_seed(seed * 7919 + v)))
    return out


def images_for(
    batch: torch.Tensor, index: torch.Tensor, views: torch.Tensor, params: list[CropFlip | None]
) -> torch.Tensor:
    """The uint8 images `batch` (rows `index` of the split), each as its view `views[i]`."""
    out = batch.clone()
    for v, p in enumerate(params):
        if p is None:
            continue
        mask = views == v
        if mask.any():
            out[mask] = apply_crop_flip(batch[mask], p[index[mask].cpu()])
    return out


@dataclass
class TeacherCache:
    folder: Path
    features: np.ndarray  # [V, N, D]
    logits: np.ndarray | None  # [V, N, C]

    def get(self, views: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        v, i = views.numpy(), index.numpy()
        feats = torch.from_numpy(np.asarray(self.features[v, i], dtype=np.float32))
        logits = (
            None if self.logits is None else torch.from_numpy(np.asarray(self.logits[v, i], dtype=np.float32))
        )
        return feats, logits


def content_hash(images: torch.Tensor, labels: torch.Tensor) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(images.numpy().tobytes())
    digest.update(labels.numpy().tobytes())
    return digest.hexdigest()


def cache_key(
    teacher_sha: str, data_hash: str, views: int, padding: int, hflip: bool, seed: int, dtype: str
) -> str:
    spec = {"teacher": teacher_sha, "data": data_hash, "views": views, "padding": padding, "hflip": hflip,
            "seed": seed, "dtype": dtype, "format": 1}  # fmt: skip
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


def _load(folder: Path) -> TeacherCache | None:
    """The finished cache in `folder`, or None when it is missing, incomplete or corrupt."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = read_json(meta_path)
        arrays = {}
        for name, entry in meta["files"].items():
            path = folder / f"{name}.npy"
            if (
                not path.is_file()
                or path.stat().st_size != entry["bytes"]
                or sha256_file(path) != entry["sha256"]
            ):
                say(f"teacher cache {folder.name}: {name}.npy is truncated or altered; rebuilding")
                return None
            arrays[name] = np.load(path, mmap_mode="r")
        return TeacherCache(folder, arrays["features"], arrays.get("logits"))
    except (ValueError, KeyError, OSError):
        say(f"teacher cache {folder.name}: metadata unreadable; rebuilding")
        return None


@torch.inference_mode()
def build_cache(
    teacher: TeacherNet, teacher_sha: str, images: torch.Tensor, labels: torch.Tensor, views: int, padding: int,
    hflip: bool, seed: int, dtype: str, with_logits: bool, device: torch.device, label: str,
) -> TeacherCache:  # fmt: skip
    """Load the cache for this teacher and these images, building (or finishing) it first if needed."""
    key = cache_key(teacher_sha, content_hash(images, labels), views, padding, hflip, seed, dtype)
    folder = cache_dir() / "teachers" / key
    # Two runs needing the same cache (a study's parallel jobs): one builds, the other waits, then loads.
    with file_lock(folder.parent / f"{key}.lock", f"teacher cache {key}", wait=True):
        return _load_or_build(
            folder,
            teacher,
            teacher_sha,
            images,
            views,
            padding,
            hflip,
            seed,
            dtype,
            with_logits,
            device,
            label,
        )


def _load_or_build(
    folder: Path, teacher: TeacherNet, teacher_sha: str, images: torch.Tensor, views: int, padding: int,
    hflip: bool, seed: int, dtype: str, with_logits: bool, device: torch.device, label: str,
) -> TeacherCache:  # fmt: skip
    cached = _load(folder)
    if cached is not None:
        return cached
    if (folder / "meta.json").exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = len(images)
    teacher.eval()
    dims = {"features": teacher.num_features}
    if with_logits:
        dims["logits"] = teacher.spec.num_classes
    np_dtype = np.float16 if dtype == "float16" else np.float32
    partial = {}
    for name, d in dims.items():
        path = folder / f"{name}.partial.npy"
        mode = "r+" if path.is_file() else "w+"
        partial[name] = np.lib.format.open_memmap(path, mode=mode, dtype=np_dtype, shape=(views, n, d))
    progress_path = folder / "progress.json"
    done = read_json(progress_path)["done"] if progress_path.is_file() else 0
    params = view_params(n, views, padding, hflip, seed)
    total = views * n
    say(f"{label}: caching {views} view(s) of {n} images ({total - done} forward passes left) in {folder}")
    bar, lines = make_progress(True), Milestones(label, total, done)
    start, computed = time.perf_counter(), 0
    with bar:
        task = bar.add_task(label, total=total, completed=done, loss=0.0, acc=0.0, ips=0.0)
        for v in range(views):
            for index in batch_indices(n, CHUNK, False):
                row = v * n + int(index[0])
                if row < done:
                    continue
                batch = images[index]
                if params[v] is not None:
                    batch = apply_crop_flip(batch, params[v][index])
                fmap = teacher.forward_features(batch.to(device).float() / 255.0)
                partial["features"][v, index.numpy()] = (
                    teacher.forward_head(fmap, pre_logits=True).cpu().numpy()
                )
                if with_logits:
                    partial["logits"][v, index.numpy()] = teacher.forward_head(fmap).float().cpu().numpy()
                for arr in partial.values():
                    arr.flush()
                done = row + len(index)
                write_json(progress_path, {"done": done})
                computed += len(index)
                ips = computed / (time.perf_counter() - start)
                bar.update(task, completed=done, ips=ips)
                lines.update(done, ips)
    files = {}
    for name, arr in partial.items():
        arr.flush()
        del arr
        final = folder / f"{name}.npy"
        (folder / f"{name}.partial.npy").replace(final)
        files[name] = {"bytes": final.stat().st_size, "sha256": sha256_file(final)}
    partial.clear()
    write_json(
        folder / "meta.json",
        {"files": files, "views": views, "images": n, "dtype": dtype, "teacher": teacher_sha},
    )
    progress_path.unlink(missing_ok=True)
    loaded = _load(folder)
    assert loaded is not None
    return loaded
