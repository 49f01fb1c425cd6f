"""Models by name: students from here or timm, ImageNet networks from torchvision or timm.

A name may carry its library as a prefix (`timm:resnet18`, `torchvision:resnet18`); a bare
name is looked up in mtkd's students, then torchvision, then timm.
"""

from __future__ import annotations

import difflib
from functools import cache
from pathlib import Path

import timm
import torch
import torchvision
from torch import nn

from mtkd.errors import MtkdError
from mtkd.models.pretrained import OFFLINE_WEIGHTS, load_offline, load_strict, read_state_dict
from mtkd.models.students import STUDENTS


@cache
def torchvision_classifiers() -> frozenset[str]:
    return frozenset(torchvision.models.list_models(module=torchvision.models))


def resolve(name: str) -> tuple[str, str]:
    """(library, architecture) for a model name; library is 'mtkd', 'torchvision' or 'timm'."""
    for prefix in ("timm", "torchvision"):
        if name.startswith(prefix + ":"):
            arch = name.split(":", 1)[1]
            known = timm.is_model(arch) if prefix == "timm" else arch in torchvision_classifiers()
            if not known:
                raise MtkdError(f"unknown {prefix} model '{arch}'")
            return prefix, arch
    if name in STUDENTS:
        return "mtkd", name
    if name in torchvision_classifiers():
        return "torchvision", name
    if timm.is_model(name):
        return "timm", name
    pool = list(STUDENTS) + sorted(torchvision_classifiers()) + timm.list_models()
    close = difflib.get_close_matches(name, pool, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else " (see `mtkd models`)"
    raise MtkdError(f"unknown model '{name}'{hint}")


def check_student(name: str) -> tuple[str, str]:
    """(library, architecture) of a student name, or the one-line error creating it would give."""
    library, arch = resolve(name)
    if library == "torchvision":
        raise MtkdError(
            f"student '{name}': use an mtkd student or a timm model (torchvision students are not supported)"
        )
    return library, arch


def create_student(name: str, num_classes: int, in_chans: int) -> nn.Module:
    """A student with random weights: mtkd's own, a registered (plugin) one, or any timm model.
    It carries its name (`mtkd_name`), so a run given the module records it by name."""
    library, arch = check_student(name)
    if library == "mtkd":
        model = STUDENTS[arch](num_classes, in_chans)
        if not isinstance(model, nn.Module):
            raise MtkdError(f"student '{name}' must be built as an nn.Module, got {type(model).__name__}")
    else:
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    model.mtkd_name = name
    return model


def registered_name(module: nn.Module, num_classes: int, in_chans: int) -> str | None:
    """The name of the one registered student (mtkd's or a plugin's) whose builder makes this
    module's architecture: the same module tree and tensor shapes. Building them does not move
    the random number generators, so a run's numbers do not depend on what is installed."""
    arch, shapes = repr(module), {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = []
    with torch.random.fork_rng(devices=[]):
        for name, build in STUDENTS.items():
            try:
                made = build(num_classes, in_chans)
            except Exception:  # noqa: BLE001 - a builder that cannot make this size is not a match
                continue
            if repr(made) == arch and {k: tuple(v.shape) for k, v in made.state_dict().items()} == shapes:
                found.append(name)
    return found[0] if len(found) == 1 else None


def check_pretrained(name: str, pretrained: str) -> None:
    """The one-line error `create_pretrained` would give for a name and weight source, without
    building the network (the hub's answer is only known when asked)."""
    library, arch = resolve(name)
    if library == "mtkd":
        raise MtkdError(
            f"'{name}' is a student architecture with no pretrained weights; pick a timm or torchvision model"
        )
    if pretrained == "offline" and arch not in OFFLINE_WEIGHTS:
        raise MtkdError(f"no offline weights are known for '{arch}' (known: {', '.join(OFFLINE_WEIGHTS)})")
    if pretrained not in ("auto", "offline", "hub", "none") and not Path(pretrained).is_file():
        raise MtkdError(f"weights file not found: {pretrained}")


def create_pretrained(name: str, pretrained: str) -> tuple[nn.Module, str, str, str]:
    """An ImageNet classifier with its weights: (model, library, architecture, where the weights came from).

    pretrained: 'auto' (offline package if installed, else hub), 'offline', 'hub', 'none', or a file path.
    """
    check_pretrained(name, pretrained)
    library, arch = resolve(name)
    offline = OFFLINE_WEIGHTS.get(arch)
    if pretrained == "auto":
        pretrained = "offline" if offline is not None and offline.path() is not None else "hub"
    if pretrained == "hub":
        return _from_hub(library, arch), library, arch, f"{library} hub"
    model = _bare(library, arch)
    if pretrained == "offline":
        source = load_offline(model, arch)
    elif pretrained == "none":
        source = "random init"
    else:
        load_strict(model, read_state_dict(pretrained), pretrained)
        source = f"file {pretrained}"
    return model, library, arch, source


def _bare(library: str, arch: str) -> nn.Module:
    if library == "timm":
        return timm.create_model(arch, pretrained=False)
    return torchvision.models.get_model(arch, weights=None)


def _from_hub(library: str, arch: str) -> nn.Module:
    try:
        if library == "timm":
            return timm.create_model(arch, pretrained=True)
        return torchvision.models.get_model(arch, weights="DEFAULT")
    except Exception as exc:  # noqa: BLE001 - network, hub and missing-weights errors alike
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MtkdError(
            f"cannot fetch {library} weights for '{arch}' (offline?): {first[:200]}. "
            "Use an offline teacher (`mtkd models`) or pretrained: PATH"
        ) from None
