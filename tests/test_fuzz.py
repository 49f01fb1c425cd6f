"""Property-based tests (hypothesis): random configs, data and checkpoint edits never end in
anything but a result or one MtkdError."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mtkd
from mtkd import MtkdError
from mtkd.data import from_tensors, from_torch
from mtkd.engine.config import TeacherFitConfig, TrainConfig, build_config, leaf_fields
from mtkd.study.config import StudyConfig

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**12), 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["auto", "sgd", "adamw", "digits", "cnn_small", "on", "off", "..", "/"]),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _keys(model) -> list[str]:
    return sorted(leaf_fields(model))


@FAST
@given(data=st.data())
@pytest.mark.parametrize("model", [TrainConfig, TeacherFitConfig, StudyConfig])
def test_random_config_values_are_a_config_or_one_line(model, data):
    keys = _keys(model) + ["nosuch", "optim.nosuch", "data"]
    overrides = data.draw(st.dictionaries(st.sampled_from(keys), values, max_size=4))
    try:
        cfg = build_config(model, overrides=overrides)
    except MtkdError as err:
        assert "\n" not in str(err)
    else:
        assert isinstance(cfg, model)


@FAST
@given(text=st.text(max_size=200))
def test_random_yaml_text_is_a_config_or_one_line(text, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    try:
        build_config(TrainConfig, path)
    except MtkdError as err:
        assert "\n" not in str(err)


dtypes = st.sampled_from([torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16,
                          torch.float32, torch.float64, torch.bool, torch.complex64])  # fmt: skip


@st.composite
def arrays(draw, max_dims=5):
    shape = draw(st.lists(st.integers(0, 5), min_size=0, max_size=max_dims))
    dtype = draw(dtypes)
    scale = draw(st.sampled_from([1.0, 255.0, 1e6, -1.0, float("nan")]))
    t = torch.rand(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 99)))) * scale
    return t.to(dtype) if dtype != torch.bool else t > 0.5


@FAST
@given(x=arrays(), y=arrays(max_dims=2), classes=st.none() | st.lists(st.text(max_size=3), max_size=6))
def test_random_tensors_are_a_dataset_or_one_line(x, y, classes):
    try:
        ds = from_tensors(x, y, x, y, classes=classes)
    except MtkdError as err:
        assert "\n" not in str(err)
    else:
        assert ds.num_classes >= 2 and len(ds.train) > 0 and ds.train.images.dtype == torch.uint8


@FAST
@given(
    labels=st.lists(
        st.one_of(st.integers(-3, 10**15), st.floats(), st.text(max_size=2), st.none()),
        min_size=1,
        max_size=12,
    )
)
def test_random_labels_from_torch_are_a_dataset_or_one_line(labels):
    images = torch.rand(len(labels), 1, 6, 6)
    pairs = [(images[i], v) for i, v in enumerate(labels)]
    try:
        ds = from_torch(pairs, pairs)
    except MtkdError as err:
        assert "\n" not in str(err)
    else:
        assert all(isinstance(v, int) and not isinstance(v, bool) or float(v).is_integer() for v in labels)
        assert ds.num_classes == max(int(v) for v in labels) + 1


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "run"
    mtkd.train("cnn_small", data="digits", epochs=1, out=out, progress=False, tensorboard=False)
    return out


def _paths(tree, prefix=()):
    yield prefix
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _paths(v, (*prefix, k))


@FAST
@given(data=st.data())
def test_random_edits_of_a_checkpoint_json_are_read_or_refused_in_one_line(run, data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("edit") / "run"
    shutil.copytree(run, folder)
    meta = json.loads((folder / "best.json").read_text())
    paths = [p for p in _paths(meta) if p]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        node = meta
        for key in path[:-1]:
            node = node[key] if isinstance(node, dict) and key in node else None
        if not isinstance(node, dict):
            continue
        if data.draw(st.booleans()):
            node.pop(path[-1], None)
        else:
            node[path[-1]] = data.draw(values)
    if data.draw(st.booleans()):
        meta.pop("content_sha256", None)
    (folder / "best.json").write_text(json.dumps(meta))
    try:
        net = mtkd.load_student(folder)
        assert net(torch.rand(2, 1, 8, 8)).shape == (2, len(net.classes))
    except MtkdError as err:
        assert "\n" not in str(err)
    shutil.rmtree(folder.parent)


@FAST
@given(data=st.data())
def test_random_edits_of_a_summary_are_read_or_refused_in_one_line(run, data, tmp_path_factory):
    from mtkd.engine.checkpoint import read_summary

    folder = tmp_path_factory.mktemp("summary")
    summary = json.loads((run / "summary.json").read_text())
    key = data.draw(st.sampled_from(sorted(summary)))
    if data.draw(st.booleans()):
        summary.pop(key)
    else:
        summary[key] = data.draw(values)
    (folder / "summary.json").write_text(json.dumps(summary))
    try:
        s = read_summary(folder / "summary.json")
    except MtkdError as err:
        assert "\n" not in str(err)
    else:
        assert 0 <= float(s["test_acc"]) <= 1 and int(s["epochs"]) >= 1
    shutil.rmtree(folder)


def test_the_fuzzers_see_both_outcomes():
    """The strategies reach both sides: a valid dataset and a refusal (else the tests above test nothing)."""
    x = np.random.default_rng(0).random((40, 1, 4, 4))
    ds = from_tensors(x, np.arange(40) % 2, x[:2], [0, 1])
    assert ds.num_classes == 2 and len(ds.train) + len(ds.val) == 40
    with pytest.raises(MtkdError):
        from_tensors(x, np.arange(40) % 2 + 0.5, x[:2], [0, 1])
