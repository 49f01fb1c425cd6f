"""The teacher cache: pooled features and logits of a frozen teacher for V views of every image.

A cache is identified by a key made of the teacher's content (architecture, preprocessing and
weights), the images' content hash, the view parameters, the storage dtype and what computes
it (the device kind, and on the CPU the thread count; chunks of CHUNK rows whatever the number
of processes), so a cache holds the bits the run that reads it would compute itself, and lives in `$MTKD_HOME/cache/<key>/` as .npy
files read through memory maps. View 0 is the clean image; view v > 0 is one draw of the run's
augmentation pipeline (crop, flip, and any of train.augment's per-image steps) from a generator
seeded with (seed, v): the seeds are what is stored, so the student can be given exactly the image
each cached output came from.

Building shows progress, can be interrupted and resumes where it stopped (`progress.json`);
the finished files' sizes and SHA-256 are recorded in `meta.json`, written last, and checked
on every load: a truncated or altered cache is rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from mtkd.console import Milestones, make_progress, say
from mtkd.data.augment import Augment, Drawn
from mtkd.data.base import Images, ImageSet, images_digest
from mtkd.data.batches import batch_indices, fetched
from mtkd.data.files import files_digest, read_files
from mtkd.data.store import decode_workers
from mtkd.dist import SINGLE, Dist
from mtkd.errors import MtkdError
from mtkd.io import cache_dir, file_lock, read_json, sha256_file, write_json
from mtkd.models.hooks import FeatureHooks
from mtkd.teachers.nets import TeacherNet

CHUNK = 256


def view_params(n: int, views: int, augment: Augment, seed: int, size: tuple[int, int]) -> list[Drawn | None]:
    """The augmentation choices of each view for n images of `size` (None for the clean view 0)."""
    per_image = replace(augment, mixup=0.0, cutmix=0.0)
    return [None] + [
        per_image.draw(n, size, torch.Generator().manual_seed(seed * 7919 + v)) for v in range(1, views)
    ]


def images_for(
    batch: torch.Tensor, index: torch.Tensor, views: torch.Tensor, params: list[Drawn | None]
) -> torch.Tensor:
    """The uint8 images `batch` (rows `index` of the split), each as its view `views[i]`.

    The choice of rows is made on the host (views and index are CPU tensors of the step's draw;
    a copy elsewhere is brought back), the images stay on their device."""
    views, index = views.cpu(), index.cpu()
    out = batch.clone()
    for v, p in enumerate(params):
        if p is None:
            continue
        rows = (views == v).nonzero().flatten()
        if len(rows):
            at = rows.to(batch.device, non_blocking=True)
            out[at] = p[index[rows]].apply(batch[at])
    return out


@dataclass
class TeacherImages:
    """The images a teacher is shown: the run's uint8 images, or, for an image folder and a teacher
    whose input is larger than them, the original files decoded at the teacher's input size (by
    DataLoader worker processes) while the student trains on its small copies."""

    images: Images
    labels: torch.Tensor
    files: list[str] | None = None
    size: int | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def reads_files(self) -> bool:
        return self.files is not None and self.size is not None

    @property
    def shape(self) -> torch.Size:
        n, c, h, w = self.images.shape
        return torch.Size((n, c, self.size, self.size)) if self.reads_files else self.images.shape

    def digest(self) -> str:
        """What the teacher's inputs are: the images and labels, and the files and size it reads."""
        base = content_hash(self.images, self.labels)
        if not self.reads_files:
            return base
        return hashlib.blake2b(
            f"{base}|files@{self.size}|{files_digest(self.files)}".encode(), digest_size=16
        ).hexdigest()

    def drawn_size(self) -> tuple[int, int]:
        """The size views are drawn for: the run's images (a teacher reading files sees them scaled)."""
        h, w = self.images.shape[-2:]
        return int(h), int(w)

    def __getitem__(self, index: slice | torch.Tensor) -> torch.Tensor:
        if not self.reads_files:
            return self.images[index]
        rows = torch.arange(len(self))[index]
        return next(read_files(self.files, [rows], self.images.shape[1], self.size, 0))

    def batches(self, chunks: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The images of each chunk of rows in turn."""
        if not self.reads_files:
            return fetched(self.images, chunks)
        return read_files(self.files, chunks, self.images.shape[1], self.size, decode_workers())


def teacher_images(part: ImageSet, input_size: int | None) -> TeacherImages:
    """What a teacher with this input size is shown of a split (see TeacherImages)."""
    h, w = part.images.shape[-2:]
    if part.files is not None and input_size is not None and input_size > max(h, w):
        return TeacherImages(part.images, part.labels, part.files, input_size)
    return TeacherImages(part.images, part.labels)


@dataclass
class TeacherCache:
    """A finished cache: arrays [V, N, ...] by name, memory-mapped (`features`, `logits` when the
    teacher is adapted, and `map:<module path>` for each intermediate map asked for)."""

    folder: Path
    arrays: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        # Row (v, i) of a [V*N, width] torch view of the same memory: index_select on it is ~30x
        # faster than numpy's fancy indexing of the memmap (benchmarks/bench_transfer.py).
        v, n = self.features.shape[:2]
        self.n = n
        self._rows = {name: torch.from_numpy(arr).view(v * n, -1) for name, arr in self.arrays.items()}

    @property
    def features(self) -> np.ndarray:
        return self.arrays["features"]

    @property
    def logits(self) -> np.ndarray | None:
        return self.arrays.get("logits")

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._rows.values())

    def to(self, device: torch.device) -> TeacherCache:
        """Keep the tables on `device` (whether they should be there is the caller's choice), so a
        lookup is one gather there."""
        self._rows = {name: table.to(device) for name, table in self._rows.items()}
        return self

    def get(
        self, views: torch.Tensor, index: torch.Tensor, device: torch.device | None = None
    ) -> dict[str, torch.Tensor]:
        """Every array's rows for images `index`, each as its view `views[i]`, as float32 on
        `device` (default: the tables' own). Rows are gathered where the tables are (the training
        device when they are kept there), copied in their stored dtype without blocking, and
        widened to float32 on arrival."""
        where = next(iter(self._rows.values())).device
        rows = (views * self.n + index).to(where, non_blocking=True)
        return {
            name: table.index_select(0, rows)
            .to(device or where, non_blocking=True)
            .float()
            .view(len(rows), *self.arrays[name].shape[2:])
            for name, table in self._rows.items()
        }


def teacher_identity(net: TeacherNet) -> str:
    """SHA-256 of what decides a frozen teacher's outputs: its module tree (layers and their
    settings), its input size and normalisation, and every parameter and buffer. Never a name."""
    return _digest(net, repr(net), lambda name: True)


def _digest(net: TeacherNet, structure: str, keep: Callable[[str], bool]) -> str:
    """SHA-256 of a structure string, the input size and normalisation, and the kept tensors."""
    digest = hashlib.sha256(structure.encode())
    digest.update(f"{net.input_size}|{net.mean.tolist()}|{net.std.tolist()}".encode())
    for name, tensor in net.state_dict().items():
        if not keep(name):
            continue
        t = tensor.detach().cpu().contiguous()
        digest.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def backbone_identity(net: TeacherNet) -> str:
    """SHA-256 of what decides a teacher's pooled features (everything but its head): the key of
    its clean-image features, shared by every head trained on them (probe fits, seeds)."""
    return _digest(net, f"{net.body!r}|{net.pool!r}", lambda name: not name.startswith("head."))


def clean_features(
    teacher: TeacherNet, source: TeacherImages, device: torch.device, label: str, place: Dist = SINGLE
) -> torch.Tensor:
    """The pooled features of the clean images, float32, cached under the backbone's identity: a
    probe fit computes them once for all its seeds, and a student's teacher cache takes its view 0
    from them (the same numbers: the same chunks through the same layers)."""
    cache = build_cache(teacher, backbone_identity(teacher), source, CLEAN_FEATURES, device, label, place)
    return torch.from_numpy(np.ascontiguousarray(cache.features[0]))


def _clean_view(
    teacher: TeacherNet, source: TeacherImages, spec: CacheSpec, device: torch.device
) -> np.ndarray | None:
    """View 0's pooled features from a finished clean-features cache, when one exists and the
    teacher's logits follow from pooled features alone (a gap head, no maps asked for)."""
    if spec.maps or not spec.with_logits or teacher._head_takes_map:
        return None
    key = cache_key(
        backbone_identity(teacher), source.digest(), 1, Augment(), 0, "float32", computed_by(device)
    )
    found = _load(cache_dir() / "teachers" / key)
    return None if found is None else found.features[0]


def computed_by(device: torch.device) -> str:
    """What, besides its inputs, decides the bits of a teacher's outputs here: on the CPU the thread
    count; on CUDA the GPU model and whether TF32 may stand in for float32 (matmul, cuDNN)."""
    if device.type == "cpu":
        return f"cpu/{torch.get_num_threads()} threads"
    if device.type == "cuda":
        tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        return f"cuda/{torch.cuda.get_device_name(device)}/tf32 {int(tf32[0])}{int(tf32[1])}"
    return device.type


def content_hash(images: Images, labels: torch.Tensor) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(images_digest(images).encode())
    digest.update(labels.numpy().tobytes())
    return digest.hexdigest()


def cache_key(
    teacher_sha: str, data_hash: str, views: int, augment: Augment, seed: int, dtype: str,
    computed: str, maps: tuple[str, ...] = (),
) -> str:  # fmt: skip
    spec = {"teacher": teacher_sha, "data": data_hash, "views": views, **augment.key(),
            "seed": seed, "dtype": dtype, "computed": computed, "format": 2}  # fmt: skip
    if maps:
        spec["maps"] = sorted(maps)
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
            arrays[name] = np.load(path, mmap_mode="c")  # copy-on-write: never changes the file
        return TeacherCache(folder, arrays)
    except (ValueError, KeyError, OSError, MtkdError):
        say(f"teacher cache {folder.name}: metadata unreadable; rebuilding")
        return None


@dataclass(frozen=True)
class CacheSpec:
    """What a cache holds: V views (view 0 clean; crops of `padding`, flips, drawn from `seed`),
    stored as `dtype`, with the logits of an adapted teacher and the maps of these module paths."""

    views: int
    padding: int
    hflip: bool
    seed: int
    dtype: str = "float16"
    with_logits: bool = True
    maps: tuple[str, ...] = ()
    augment: Augment | None = (
        None  # a pipeline beyond crop and flip (its padding and hflip are the ones above)
    )

    @property
    def pipeline(self) -> Augment:
        return replace(self.augment or Augment(), padding=self.padding, hflip=self.hflip)


CLEAN_FEATURES = CacheSpec(views=1, padding=0, hflip=False, seed=0, dtype="float32", with_logits=False)


@torch.inference_mode()
def build_cache(
    teacher: TeacherNet, teacher_sha: str, source: TeacherImages, spec: CacheSpec, device: torch.device,
    label: str, place: Dist = SINGLE,
) -> TeacherCache:  # fmt: skip
    """Load the cache for this teacher and these images, building (or finishing) it first if needed.

    Under torchrun the processes share the work: each computes its chunks of every round and
    rank 0 writes them, so the cache is the one a single process builds.
    """
    data = source.digest()
    key = cache_key(
        teacher_sha, data, spec.views, spec.pipeline, spec.seed, spec.dtype, computed_by(device), spec.maps,
    )  # fmt: skip
    folder = cache_dir() / "teachers" / key
    # Two runs needing the same cache (a study's parallel jobs): one builds, the other waits, then loads.
    # Within one torchrun job, rank 0 holds the lock and decides for all.
    lock = (
        file_lock(folder.parent / f"{key}.lock", f"teacher cache {key}", wait=True)
        if place.main
        else nullcontext()
    )
    with lock:
        cached = _load(folder) if place.main else None
        if not place.broadcast(cached is not None):
            clean = _clean_view(teacher, source, spec, device)
            _build(folder, _Builder(teacher, spec, device, label, clean), teacher_sha, source, place)
        place.barrier()
    cached = cached or _load(folder)
    if cached is None:
        raise MtkdError(
            f"teacher cache {folder} is not readable by process {place.rank}: with several machines, "
            "MTKD_HOME must be a folder all of them share"
        )
    return cached


class _Builder:
    """The teacher's outputs for one chunk of images, by array name, flattened per image."""

    def __init__(self, teacher: TeacherNet, spec: CacheSpec, device: torch.device, label: str,
                 clean: np.ndarray | None = None):  # fmt: skip
        self.teacher, self.spec, self.device, self.label = teacher, spec, device, label
        self.hooks = FeatureHooks(teacher, list(spec.maps)) if spec.maps else None
        self.clean = clean  # view 0's pooled features, already computed (see clean_features)

    def known(self, v: int) -> bool:
        """Are view v's outputs computed without the images (from the clean features)?"""
        return v == 0 and self.clean is not None

    def chunk(self, v: int, index: torch.Tensor, batch: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Chunk `index` of view `v`: from the clean features through the head when they are known."""
        if self.known(v):
            feats = torch.from_numpy(self.clean[index.numpy()]).to(self.device, non_blocking=True)
            return {
                "features": feats,
                "logits": self.teacher.head(feats),
            }  # a gap head: logits = head(pooled)
        return self(batch)

    def shapes(self, sample: torch.Tensor) -> dict[str, tuple[int, ...]]:
        """Each array's shape per image, from one image."""
        return {name: tuple(out.shape[1:]) for name, out in self(sample[:1]).items()}

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        feats, logits = self.teacher.pooled_and_logits(
            batch.to(self.device, non_blocking=True).float() / 255.0, self.spec.with_logits
        )
        out = {"features": feats} if logits is None else {"features": feats, "logits": logits}
        for path in self.spec.maps:
            out[f"map.{path}"] = self.hooks.outputs[path]
        return out


def _chunk_hash(partial: dict[str, np.ndarray], v: int, index: torch.Tensor) -> str:
    """SHA-256 of one chunk's rows in every array, as they are in the files."""
    digest = hashlib.sha256()
    rows = slice(int(index[0]), int(index[-1]) + 1)
    for name in sorted(partial):
        digest.update(np.ascontiguousarray(partial[name][v, rows]).tobytes())
    return digest.hexdigest()


def _rows_done(chunks: list[tuple[int, torch.Tensor]], n: int) -> int:
    """Rows of the [V*N] table that the chunks cover, when they are the first ones in order."""
    if not chunks:
        return 0
    v, index = chunks[-1]
    return v * n + int(index[-1]) + 1


def _reopened(folder: Path, shapes: dict[str, tuple[int, ...]], dtype: type) -> dict[str, np.ndarray]:
    """The partial arrays of an interrupted build, when every one is there with the right shape and
    dtype; {} otherwise (the build starts again)."""
    out = {}
    for name, shape in shapes.items():
        path = folder / f"{name}.partial.npy"
        try:
            arr = np.lib.format.open_memmap(path, mode="r+")
        except (OSError, ValueError):
            return {}
        if arr.shape != shape or arr.dtype != dtype:
            return {}
        out[name] = arr
    return out


def _verified(partial: dict[str, np.ndarray], progress: Path, chunks: list, label: str) -> list[str]:
    """The hashes of the chunks an interrupted build recorded that are in the files as recorded,
    in order: a record can outlive the rows it describes (a lost page cache), so each is read back."""
    try:
        record = read_json(progress, default={})
    except (OSError, ValueError, MtkdError):
        record = {}
    recorded = record.get("chunks") if isinstance(record, dict) else None
    if (
        not isinstance(recorded, list)
        or not all(isinstance(h, str) for h in recorded)
        or len(recorded) > len(chunks)
    ):
        if recorded is not None or (isinstance(record, dict) and record.get("done")):
            say(f"{label}: the interrupted cache build's record cannot be checked; starting it again")
        return []
    good = 0
    for (v, index), h in zip(chunks, recorded, strict=False):
        if _chunk_hash(partial, v, index) != h:
            break
        good += 1
    if good < len(recorded):
        say(f"{label}: {len(recorded) - good} of the {len(recorded)} chunks an interrupted build recorded are not "
            "in its files as recorded; computing them again")  # fmt: skip
    return recorded[:good]


def _build(folder: Path, builder: _Builder, teacher_sha: str, source: TeacherImages, place: Dist) -> None:
    """Compute the cache in chunks of CHUNK rows; rounds of one chunk per process, written by rank 0."""
    spec, teacher = builder.spec, builder.teacher
    n, views = len(source), spec.views
    teacher.eval()
    shapes = builder.shapes(source[0:1])
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    partial, progress_path, done = {}, folder / "progress.json", 0
    hashes: list[str] = []
    chunks = [(v, index) for v in range(views) for index in batch_indices(n, CHUNK, False)]
    if place.main:
        if (folder / "meta.json").exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np_dtype = np.float16 if spec.dtype == "float16" else np.float32
        partial = _reopened(folder, {k: (views, n, *v) for k, v in shapes.items()}, np_dtype)
        hashes = _verified(partial, progress_path, chunks, builder.label) if partial else []
        for name, shape in shapes.items():
            if name not in partial:
                partial[name] = np.lib.format.open_memmap(
                    folder / f"{name}.partial.npy", mode="w+", dtype=np_dtype, shape=(views, n, *shape)
                )
        done = _rows_done(chunks[: len(hashes)], n)
    done = int(place.broadcast(done))
    params = view_params(n, views, spec.pipeline, spec.seed, source.drawn_size())
    # Chunk (v, rows) covers rows v*n + rows of the [V*N] table; `done` counts finished rows of it.
    todo = [
        (v, index) for v in range(views) for index in batch_indices(n, CHUNK, False)
        if v * n + int(index[-1]) + 1 > done
    ]  # fmt: skip
    total = views * n
    rounds = [todo[first : first + place.world] for first in range(0, len(todo), place.world)]
    # This process's chunks whose images are read (view 0 may come from the clean features).
    mine = [group[place.rank] for group in rounds if place.rank < len(group)]
    batches = source.batches([index for v, index in mine if not builder.known(v)])
    where = f", {place.world} processes" if place.active else ""
    if source.reads_files:
        where += f", the original files at {source.size}px"
    say(
        f"{builder.label}: caching {views} view(s) of {n} images ({total - done} forward passes left{where}) in {folder}"
    )
    bar, lines = make_progress(True), Milestones(builder.label, total, done)
    start, computed = time.perf_counter(), 0
    width = sum(sizes.values())
    with bar:
        task = bar.add_task(builder.label, total=total, completed=done, loss=0.0, acc=0.0, ips=0.0)
        for group in rounds:
            computed_here = torch.zeros(CHUNK, width)
            if place.rank < len(group):
                v, index = group[place.rank]
                batch = None if builder.known(v) else next(batches)
                if batch is not None and params[v] is not None:
                    batch = params[v][index].apply(batch)  # at the teacher's size when it reads files
                outputs = builder.chunk(v, index, batch)
                computed_here[: len(index)] = torch.cat(
                    [outputs[k].float().flatten(1) for k in sizes], 1
                ).cpu()
            results = place.all_gather(computed_here)
            rows = sum(len(index) for _, index in group)
            computed += rows
            if place.main:
                for (v, index), result in zip(group, results, strict=False):
                    at = 0
                    for name, size in sizes.items():
                        block = result[: len(index), at : at + size].reshape(len(index), *shapes[name])
                        partial[name][v, index.numpy()] = block.numpy()
                        at += size
                for arr in partial.values():
                    arr.flush()
                hashes += [_chunk_hash(partial, v, index) for v, index in group]
                v, index = group[-1]
                done = v * n + int(index[-1]) + 1
                write_json(progress_path, {"done": done, "chunks": hashes})
            ips = computed / (time.perf_counter() - start)
            bar.update(task, advance=rows, ips=ips)
            lines.update(done if place.main else computed, ips)
    if builder.hooks is not None:
        builder.hooks.remove()
    if not place.main:
        return
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
        {
            "files": files,
            "views": views,
            "images": n,
            "dtype": spec.dtype,
            "teacher": teacher_sha,
            "maps": list(spec.maps),
        },
    )
    progress_path.unlink(missing_ok=True)
