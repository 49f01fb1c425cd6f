"""One teacher of a run: its network, its identity, its hooks and its cache.

A `Teacher` is made without I/O (the network is already built), then readied for a run by
`prepare` (cached teachers find or build their cache, a visible stage of the run; online
teachers hook the maps the methods read), placed by `to`, and asked each step for its
`outputs` on the rows the student sees.
"""

from __future__ import annotations

import torch

from mtkd.data.base import ImageSet
from mtkd.device import fits_on
from mtkd.dist import SINGLE, Dist
from mtkd.errors import MtkdError
from mtkd.methods.base import FINAL_MAP, TeacherOutputs
from mtkd.models.hooks import FeatureHooks, check_path
from mtkd.teachers.cache import CacheSpec, TeacherCache, build_cache, teacher_identity, teacher_images
from mtkd.teachers.modules import ModuleTeacher
from mtkd.teachers.nets import TeacherNet


class Teacher:
    """A frozen teacher: `net` (an mtkd TeacherNet or a ModuleTeacher), `sha` its content
    (architecture, preprocessing, weights: the cache key's part), `has_logits` when it is adapted
    to the dataset's classes, `reads_files` when it is shown an image folder's original files at
    its own input size (ImageNet and probe-adapted teachers) rather than the run's small copies,
    and `recorded`, how the run's config records it."""

    def __init__(
        self, name: str, net: TeacherNet | ModuleTeacher, has_logits: bool, reads_files: bool = False,
        recorded: str | dict | None = None,
    ):  # fmt: skip
        self.name, self.net = name, net
        self.has_logits, self.reads_files, self.recorded = has_logits, reads_files, recorded
        for p in net.parameters():
            p.requires_grad_(False)
        self.sha = teacher_identity(net)
        self.maps: tuple[str, ...] = ()
        self.cache: TeacherCache | None = None
        self.hooks: FeatureHooks | None = None
        self.prepared = False
        self.device = torch.device("cpu")

    @property
    def arch(self) -> str:
        """The teacher's network by name (`mobilenet_v2`; a module's class name), whatever its label."""
        spec = getattr(self.net, "spec", None)
        return spec.name if spec is not None else type(getattr(self.net, "module", self.net)).__name__

    def prepare(
        self, train: ImageSet, spec: CacheSpec | None, maps: tuple[str, ...], device: torch.device,
        place: Dist = SINGLE,
    ) -> Teacher:  # fmt: skip
        """Ready the outputs a run reads: with `spec` (cached), find or build the cache of its views
        of `train` (with these maps) on `device`; without (online), hook `maps` on the network."""
        self.check(maps)
        self.maps = maps
        if spec is not None:
            size = self.net.input_size if self.reads_files else None
            self.cache = build_cache(
                self.net, self.sha, teacher_images(train, size), spec, device, f"teacher {self.name}", place
            )
        elif maps and self.hooks is None:
            self.hooks = FeatureHooks(self.net, list(maps))
        self.prepared = True
        return self

    def check(self, maps: tuple[str, ...]) -> None:
        """Refuse, in one line, maps this teacher cannot give (a path it does not have: with the
        nearest ones)."""
        if FINAL_MAP in maps and not isinstance(self.net, TeacherNet):
            raise MtkdError(
                f"teacher {self.name}: camkd's feature: map reads an mtkd teacher's last feature map and "
                "classifier; with a teacher module use camkd with feature: pooled"
            )
        for path in maps:
            check_path(self.net, path, f"teacher {self.name}: ")

    def map_shapes(self, images: torch.Tensor) -> dict[str, tuple[int, ...]]:
        """One image's shape of each map it gives: read from the cache, or (online) from one pass
        over `images` (uint8 rows as the student sees them)."""
        if self.cache is not None:
            return {p: tuple(self.cache.arrays[f"map.{p}"].shape[2:]) for p in self.maps}
        self.outputs(None, torch.zeros(len(images), dtype=torch.long), images.to(self.device))
        shapes = {p: tuple(self.hooks.outputs[p].shape[1:]) for p in self.maps} if self.hooks else {}
        return shapes

    def to(self, device: torch.device) -> Teacher:
        """Answer on `device`. A cached teacher keeps its tables there when they fit in a quarter of
        its free memory (CUDA; on the CPU they stay memory-mapped), and its backbone leaves the
        device: only camkd's map term still calls a part of it (the classifier head, on `device`).
        An online teacher's network moves to `device`."""
        self.device = device
        if self.cache is None:
            self.net.to(device)
            return self
        if fits_on(device, self.cache.nbytes):
            self.cache.to(device)
        if FINAL_MAP in self.maps:  # an mtkd TeacherNet (checked by prepare)
            for name, part in self.net.named_children():
                part.to("cpu" if name == "body" else device)
        else:
            self.net.to("cpu")
        return self

    def outputs(
        self, views: torch.Tensor | None, index: torch.Tensor, images: torch.Tensor
    ) -> TeacherOutputs:
        """Its outputs for rows `index` of the training split: from the cache, each row as its view
        `views[i]`; online, from `images` (uint8, as the student sees them)."""
        head = getattr(self.net, "forward_head", None) if self.has_logits else None
        if self.cache is not None:
            rows = self.cache.get(views, index, self.device)
            maps = {p: rows[f"map.{p}"] for p in self.maps}
            return TeacherOutputs(rows["features"], rows.get("logits"), maps, head)
        # no_grad, not inference_mode: the outputs are saved for the backward pass of some terms.
        with torch.no_grad():
            feats, logits = self.net.pooled_and_logits(images.float() / 255.0, self.has_logits)
        maps = dict(self.hooks.outputs) if self.hooks else {}
        return TeacherOutputs(feats, logits, maps, head)
