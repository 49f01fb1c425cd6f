"""Models by name: students from here or timm, ImageNet networks from torchvision or timm.

A name may carry its library as a prefix (`timm:resnet18`, `torchvision:resnet18`); a bare
name is looked up in mtkd's students, then torchvision, then timm. `hf-hub:ORG/NAME` is a timm
model on the Hugging Face Hub (its config.json and weights, fetched by timm when online).

Students may start from pretrained weights (`model.pretrained`): the offline packages, the hub,
a weights file or an hf-hub: name. timm loads them as it does for its own fine-tuning: the
classifier is left out when the class count differs, and the first convolution is adapted to
the data's channels (`in_chans`: summed over RGB for grey images).
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import re
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

import timm
import torch
import torchvision
from torch import nn

from mtkd.errors import MtkdError, first_line
from mtkd.models.pretrained import OFFLINE_WEIGHTS, load_offline, load_strict, offline_state, read_state_dict
from mtkd.models.students import STUDENTS

HF_HUB = "hf-hub:"
WEIGHT_SOURCES = ("auto", "offline", "hub", "none")


@cache
def torchvision_classifiers() -> frozenset[str]:
    return frozenset(torchvision.models.list_models(module=torchvision.models))


def resolve(name: str) -> tuple[str, str]:
    """(library, architecture) for a model name; library is 'mtkd', 'torchvision', 'timm' or
    'hf-hub' (architecture: ORG/NAME)."""
    if name.startswith(HF_HUB):
        repo = name[len(HF_HUB) :]
        if not re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w.-]+)?", repo):
            raise MtkdError(f"'{name}': a Hub model is named hf-hub:ORG/NAME")
        return "hf-hub", repo
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


def check_student(name: str, pretrained: str = "none") -> tuple[str, str]:
    """(library, architecture) of a student name, or the one-line error creating it would give."""
    library, arch = resolve(name)
    if library == "torchvision":
        twin = {"mobilenet_v2": " (timm:mobilenetv2_100 is the same network)"}.get(arch, "")
        raise MtkdError(
            f"student '{name}': use an mtkd student or a timm model (torchvision students are not supported){twin}"
        )
    if library == "hf-hub" and pretrained not in ("auto", "hub", "none"):
        raise MtkdError(f"'{name}': its weights come from the Hub (pretrained: auto), not '{pretrained}'")
    if pretrained in WEIGHT_SOURCES[:3] and library == "mtkd":
        raise MtkdError(
            f"student '{name}' has no pretrained weights to fetch: model.pretrained takes a weights file for it"
        )
    if pretrained == "offline" and arch not in OFFLINE_WEIGHTS:
        raise MtkdError(f"no offline weights are known for '{arch}' (known: {', '.join(OFFLINE_WEIGHTS)})")
    if pretrained not in WEIGHT_SOURCES and not Path(pretrained).is_file():
        raise MtkdError(f"weights file not found: {pretrained}")
    return library, arch


def create_student(name: str, num_classes: int, in_chans: int, pretrained: str = "none") -> nn.Module:
    """A student: mtkd's own, a registered (plugin) one, or any timm model (hf-hub: too), with random
    weights or `pretrained` ones ('auto', 'offline', 'hub' or a weights file). It carries its name
    (`mtkd_name`, so a run given the module records it by name), where its weights came from
    (`mtkd_weights`) and, for a Hub model, its timm architecture (`mtkd_arch`)."""
    library, arch = check_student(name, pretrained)
    source = "random init"
    if library == "mtkd":
        model = STUDENTS[arch](num_classes, in_chans)
        if not isinstance(model, nn.Module):
            raise MtkdError(f"student '{name}' must be built as an nn.Module, got {type(model).__name__}")
        if pretrained != "none":
            load_strict(model, read_state_dict(pretrained), pretrained)
            source = f"file {pretrained}"
    elif library == "hf-hub":
        model = _hub_call(name, lambda: timm.create_model(
            name, pretrained=pretrained != "none", num_classes=num_classes, in_chans=in_chans
        ))  # fmt: skip
        source = name if pretrained != "none" else source
    else:
        model, source = _timm_student(arch, num_classes, in_chans, pretrained)
    model.mtkd_name = name
    model.mtkd_weights = source
    model.mtkd_arch = getattr(model, "pretrained_cfg", {}).get("architecture", arch)
    return model


def _timm_student(arch: str, num_classes: int, in_chans: int, pretrained: str) -> tuple[nn.Module, str]:
    offline = OFFLINE_WEIGHTS.get(arch)
    if pretrained == "auto":
        pretrained = "offline" if offline is not None and offline.path() is not None else "hub"
    if pretrained == "none":
        return timm.create_model(
            arch, pretrained=False, num_classes=num_classes, in_chans=in_chans
        ), "random init"
    if pretrained == "hub":
        model = _hub_call(f"timm:{arch}", lambda: timm.create_model(
            arch, pretrained=True, num_classes=num_classes, in_chans=in_chans
        ))  # fmt: skip
        return model, "timm hub"
    imagenet = timm.create_model(arch, pretrained=False)
    if pretrained == "offline":
        state, source = offline_state(imagenet, arch)
    else:
        state, source = dict(read_state_dict(pretrained)), f"file {pretrained}"
    # timm's own loading: classifier left out when the classes differ, first conv adapted to in_chans.
    overlay: dict = {"state_dict": state}
    cfg = imagenet.pretrained_cfg
    head, stem = f"{cfg.get('classifier')}.weight", f"{cfg.get('first_conv')}.weight"
    if head in state:
        overlay["num_classes"] = int(state[head].shape[0])
    if stem in state and state[stem].dim() == 4:
        overlay["input_size"] = (int(state[stem].shape[1]), *cfg["input_size"][1:])
    try:
        model = timm.create_model(
            arch, pretrained=True, num_classes=num_classes, in_chans=in_chans, pretrained_cfg_overlay=overlay
        )
    except (RuntimeError, KeyError, ValueError) as exc:
        first = first_line(exc)
        raise MtkdError(f"weights from {source} do not fit {arch}: {first[:200]}") from None
    model.pretrained_cfg.pop("state_dict", None)  # the network holds them now
    return model, source


@contextlib.contextmanager
def quiet_hub() -> Iterator[None]:
    """huggingface_hub's retry warnings kept off the terminal: a failure is said once, in one line."""
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_log.setLevel(level)


def _hub_call(what: str, build: Callable[[], nn.Module]) -> nn.Module:
    """`build()`, or one line saying what could not be fetched (offline, a missing repository)."""
    try:
        with quiet_hub():
            return build()
    except Exception as exc:  # noqa: BLE001 - network, hub and missing-repository errors alike
        first = first_line(exc)
        where = (
            f"the Hugging Face Hub repository {what[len(HF_HUB) :]}"
            if what.startswith(HF_HUB)
            else f"{what} weights"
        )
        raise MtkdError(f"cannot fetch {where} (offline, or no such repository?): {first[:200]}") from None


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
    if library == "hf-hub":
        if pretrained not in ("auto", "hub", "none"):
            raise MtkdError(f"'{name}': its weights come from the Hub (pretrained: auto), not '{pretrained}'")
        return
    if pretrained == "offline" and arch not in OFFLINE_WEIGHTS:
        raise MtkdError(f"no offline weights are known for '{arch}' (known: {', '.join(OFFLINE_WEIGHTS)})")
    if pretrained not in WEIGHT_SOURCES and not Path(pretrained).is_file():
        raise MtkdError(f"weights file not found: {pretrained}")


def create_pretrained(name: str, pretrained: str) -> tuple[nn.Module, str, str, str]:
    """An ImageNet classifier with its weights: (model, library, architecture, where the weights came from).

    pretrained: 'auto' (offline package if installed, else hub), 'offline', 'hub', 'none', or a file path.
    """
    check_pretrained(name, pretrained)
    library, arch = resolve(name)
    if library == "hf-hub":
        model = _hub_call(name, lambda: timm.create_model(name, pretrained=pretrained != "none"))
        return model, "timm", model.pretrained_cfg.get("architecture", arch), name
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
        first = first_line(exc)
        raise MtkdError(
            f"cannot fetch {library} weights for '{arch}' (offline?): {first[:200]}. "
            "Use an offline teacher (`mtkd models`) or pretrained: PATH"
        ) from None
