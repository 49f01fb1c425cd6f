"""Bad input from Python and damaged state: each case ends in one MtkdError (or one CLI line and
exit status 2) naming the problem, and nothing is written or lost."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset as TorchDataset

import mtkd
from conftest import run_cli
from mtkd import MtkdError
from mtkd.data import from_tensors, from_torch
from mtkd.engine.checkpoint import content_hash

X = torch.rand(40, 1, 8, 8)
Y = torch.arange(40) % 4


def _one_line(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("mtkd: error:") and "Traceback" not in err, err
    return lines[-1]


# -- data given from Python ------------------------------------------------------------------------

TENSOR_CASES = [
    (dict(y_train=Y * 10**12), "labels go up to 3000000000000 but only 7 distinct values appear"),
    (dict(y_train=["cat"] * 40), "y_train must be numbers"),
    (dict(y_train=None), "y_train must be a tensor or an array, got NoneType"),
    (dict(y_train=torch.full((40,), float("inf"))), "y_train hold NaN or infinite values"),
    (dict(y_train=torch.full((40,), float("nan"))), "y_train hold NaN or infinite values"),
    (dict(y_train=Y.float() + 0.5), "whole class indices, got floats such as 0.5"),
    (dict(y_train=Y.bool()), "must be class indices (integers), got dtype torch.bool"),
    (dict(y_train=Y[:10]), "must be a vector of 40 class indices, got shape (10,)"),
    (dict(y_train=Y[:, None]), "must be a vector of 40 class indices, got shape (40, 1)"),
    (dict(y_train=-Y), "class indices >= 0, got -3"),
    (dict(y_train=torch.full((40,), 1e300, dtype=torch.float64)), "got values as large as 1e+300"),
    (dict(classes=5), "classes must be a list of class names, got int"),
    (dict(classes="abcd"), "classes must be a list of class names, got str"),
    (dict(classes=["a", "b", "a", "c"]), "class name 'a' is given twice"),
    (dict(classes=["a", "b"]), "labels go up to 3 but 2 classes are named"),
    (dict(x_train=X[:0], y_train=Y[:0]), "x_train hold no images"),
    (dict(x_train="images"), "x_train must be a tensor or an array, got str"),
    (dict(x_train=None), "x_train must be a tensor or an array, got NoneType"),
    (dict(x_train=[[1, 2], [3]]), "x_train must be numbers"),
    (dict(x_train=X[None]), "must be [N, C, H, W], [N, H, W] or [N, H, W, C], got shape (1, 40, 1, 8, 8)"),
    (dict(x_train=X.repeat(1, 2, 1, 1)), "must have 1 (grey) or 3 (colour) channels"),
    (dict(x_train=X - 0.5), "they look normalised"),
    (dict(x_train=X * 300), "exceed 255"),
    (dict(x_train=X * float("nan")), "x_train hold NaN or infinite values"),
    (dict(x_train=X.bool()), "unsupported dtype torch.bool"),
    (dict(x_train=X.to(torch.complex64)), "unsupported dtype torch.complex64"),
    (dict(x_test=torch.rand(40, 1, 9, 9)), "splits differ in image shape"),
    (dict(y_train=Y % 1, y_test=Y % 1), "has 1 class(es)"),
    (dict(x_train=torch.full((40, 1, 8, 8), 0.5)), "the training images are constant"),
    (dict(x_val=X), "give both x_val and y_val, or neither"),
]


@pytest.mark.parametrize(("change", "message"), TENSOR_CASES)
def test_from_tensors_refuses_bad_data_in_one_line(change, message):
    args = {"x_train": X, "y_train": Y, "x_test": X, "y_test": Y, **change}
    extra = {k: args.pop(k) for k in ("classes", "x_val") if k in args}
    with pytest.raises(MtkdError, match=None) as err:
        from_tensors(args["x_train"], args["y_train"], args["x_test"], args["y_test"], **extra)
    assert message in str(err.value) and "\n" not in str(err.value)


class _Pairs(TorchDataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class _NoLength(TorchDataset):
    def __getitem__(self, i):
        return X[i], 0


TORCH_CASES = [
    (
        _Pairs([(X[i], 0.5 if i == 3 else int(Y[i])) for i in range(40)]),
        "train[3]'s label must be whole class indices",
    ),
    (_Pairs([(X[i], "cat") for i in range(40)]), "train[0]'s label must be a tensor or an array, got str"),
    (_Pairs([(X[i], [1, "a"]) for i in range(40)]), "train[0]'s label must be numbers"),
    (_Pairs([(X[i], None) for i in range(40)]), "train[0]'s label must be a tensor or an array"),
    (_Pairs([(X[i], torch.tensor([1, 2])) for i in range(40)]), "train[0]'s label must be one class index"),
    (_Pairs([X[i] for i in range(40)]), "train[0] is not an (image, label) pair"),
    (_Pairs([]), "train is empty"),
    (_NoLength(), "a torch Dataset with a length (map-style) is needed"),
]


@pytest.mark.parametrize(("train", "message"), TORCH_CASES)
def test_from_torch_refuses_what_from_tensors_refuses(train, message):
    test = _Pairs([(X[i], int(Y[i])) for i in range(40)])
    with pytest.raises(MtkdError) as err:
        from_torch(train, test)
    assert message in str(err.value)


def test_float_labels_that_are_whole_numbers_are_taken_the_same_way_by_both():
    a = from_tensors(X, Y.double(), X, Y)
    b = from_torch(
        _Pairs([(X[i], float(Y[i])) for i in range(40)]), _Pairs([(X[i], int(Y[i])) for i in range(40)])
    )
    assert torch.equal(a.train.labels, b.train.labels) and a.classes == b.classes == ["0", "1", "2", "3"]


# -- the API's arguments ---------------------------------------------------------------------------

API_CASES = [
    (lambda: mtkd.train(config=42), "config must be a YAML path or a mapping, got int"),
    (lambda: mtkd.train(42), "the student must be a model name or an nn.Module, got int"),
    (lambda: mtkd.train("cnn_small", teachers=42), "teachers must be a list of teachers, got int"),
    (lambda: mtkd.train("cnn_small", teachers=[42]), "a teacher is a run folder, a model name"),
    (lambda: mtkd.train("cnn_small", methods=42), "methods must be a list of method names or mappings"),
    (lambda: mtkd.train("cnn_small", resume="yes"), "resume must be True or False"),
    (lambda: mtkd.train("cnn_small", nosuch=1), "unknown option 'nosuch'"),
    (lambda: mtkd.fit_teacher(nn.Linear(2, 2)), "a module teacher is given to train(teachers=[module])"),
    (lambda: mtkd.fit_teacher(42), "fit_teacher's teacher must be a model name or a teacher mapping"),
    (
        lambda: mtkd.fit_teacher("mobilenet_v2", config=3.5),
        "config must be a YAML path or a mapping, got float",
    ),
    (lambda: mtkd.study(42), "the study's config must be a YAML path or a mapping, got int"),
    (lambda: mtkd.study({}, jobs="2"), "jobs must be a whole number >= 1, got str"),
    (lambda: mtkd.study({}, report_only="no"), "report_only must be True or False"),
    (lambda: mtkd.evaluate(42), "the run to evaluate must be a run folder or checkpoint path"),
    (lambda: mtkd.evaluate("runs/x", split="dev"), "split must be 'train', 'val' or 'test', got 'dev'"),
    (lambda: mtkd.evaluate("runs/x", model="cnn_small"), "model must be an nn.Module"),
    (lambda: mtkd.evaluate("runs/x", device="xla"), "device 'xla' is not supported"),
    (lambda: mtkd.load_student(42), "the run to load must be a run folder, checkpoint path, local-dir:DIR"),
    (lambda: mtkd.load_student("runs/x", device="nosuch"), "unknown device 'nosuch'"),
    (lambda: mtkd.load_student("runs/x", device=5), "device must be a device name"),
    (
        lambda: mtkd.load_student("runs/x", model="cnn_small"),
        "model must be an nn.Module of the student's architecture (not a name)",
    ),
    (lambda: mtkd.load_student("runs/nothing-here"), "checkpoint not found"),
]


@pytest.mark.parametrize(("call", "message"), API_CASES)
def test_the_api_refuses_wrong_arguments_in_one_line(call, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MtkdError) as err:
        call()
    assert message in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
def test_a_cuda_device_is_refused_where_there_is_none():
    with pytest.raises(MtkdError, match="no CUDA device is available"):
        mtkd.load_student("runs/x", device="cuda:7")


def test_study_can_be_called_twice_in_one_process_and_after_importing_the_package(tmp_path):
    code = (
        "import mtkd, mtkd.study.config\n"
        "for _ in range(2):\n"
        "    try:\n"
        "        mtkd.study({'name': 'x', 'output': 'out', 'students': []})\n"
        "    except mtkd.MtkdError as e:\n"
        "        print('ERR', e)\n"
        "from mtkd import study\nprint(callable(study))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("ERR bad value for 'students': is empty") == 2 and out.stdout.strip().endswith(
        "True"
    )


def test_a_level_set_right_after_import_quiets_mtkd(tmp_path):
    code = (
        "import logging, mtkd\nlogging.getLogger('mtkd').setLevel(logging.WARNING)\n"
        "mtkd.train('cnn_small', data='digits', epochs=1, out='run', progress=False)\n"
        "print('LEVEL', logging.getLogger('mtkd').level)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert f"LEVEL {logging.WARNING}" in out.stdout and "training cnn_small" not in out.stderr, out.stderr


# -- a module of the user's that fails -------------------------------------------------------------


class _Raises(nn.Module):
    def __init__(self, error: BaseException):
        super().__init__()
        self.fc, self.error = nn.Linear(64, 10), error

    def forward(self, x):
        raise self.error


@pytest.mark.parametrize(
    "error", [ValueError("bad shape"), AssertionError(), KeyError("k"), RuntimeError("boom")]
)
def test_a_student_module_that_raises_is_one_line_and_leaves_no_folder(error, tmp_path):
    with pytest.raises(MtkdError) as err:
        mtkd.train(_Raises(error), data="digits", epochs=1, out=tmp_path / "run", progress=False)
    assert "_Raises cannot take [N, 1, 8, 8] images" in str(err.value)
    assert not (tmp_path / "run").exists()


def test_an_error_in_training_before_the_first_checkpoint_leaves_no_folder(tmp_path, monkeypatch):
    from mtkd.engine import trainer

    def broken(self, *args, **kwargs):
        raise RuntimeError("a failure inside the first epoch")

    monkeypatch.setattr(trainer.Trainer, "fit", broken)
    with pytest.raises(RuntimeError):
        mtkd.train("cnn_small", data="digits", epochs=1, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("kept")
    with pytest.raises(RuntimeError):
        mtkd.train("cnn_small", data="digits", epochs=1, out=tmp_path / "mine", progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "kept"  # a folder it did not create stays


def test_a_tracker_that_cannot_start_leaves_no_folder(tmp_path):
    with pytest.raises(MtkdError, match="output.trackers: mlflow could not start"):
        mtkd.train("cnn_small", data="digits", epochs=1, out=tmp_path / "run", progress=False,
                   trackers=["mlflow"], mlflow_uri="nosuchscheme://nowhere")  # fmt: skip
    assert not (tmp_path / "run").exists()


# -- hand-edited checkpoints and summaries -------------------------------------------------------------


@pytest.fixture(scope="module")
def student_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bad-input") / "run"
    mtkd.train("cnn_small", data="digits", epochs=1, out=out, progress=False, tensorboard=False)
    return out


def _edit(meta: dict, change) -> dict:
    meta = json.loads(json.dumps(meta))
    change(meta)
    return meta


CHECKPOINT_EDITS = [
    (
        "altered",
        lambda m: m["data"]["classes"].__setitem__(0, "zero"),
        True,
        "was altered after it was saved",
    ),
    ("files missing", lambda m: m.pop("files"), False, "'files' field required"),
    ("files wrong type", lambda m: m.__setitem__("files", [1, 2]), False, "'files'"),
    (
        "weights not a mapping",
        lambda m: m["files"].__setitem__("weights", "best.safetensors"),
        False,
        "'files.weights'",
    ),
    (
        "weights a path",
        lambda m: m["files"]["weights"].__setitem__("name", "../other.safetensors"),
        False,
        "'files.weights.name'",
    ),
    (
        "weights sha malformed",
        lambda m: m["files"]["weights"].__setitem__("sha256", "abc"),
        False,
        "'files.weights.sha256'",
    ),
    (
        "weights bytes negative",
        lambda m: m["files"]["weights"].__setitem__("bytes", -1),
        False,
        "'files.weights.bytes'",
    ),
    ("model name numeric", lambda m: m["model"].__setitem__("name", 7), False, "'model.name'"),
    ("model missing", lambda m: m.pop("model"), False, "'model' field required"),
    ("std channels", lambda m: m["data"].__setitem__("std", [0.3, 0.3, 0.3]), False, "one value per channel"),
    ("std zero", lambda m: m["data"].__setitem__("std", [0.0]), False, "std must be positive"),
    ("image size 0", lambda m: m["data"].__setitem__("image_size", [0, 8]), False, "'data.image_size'"),
    ("image size text", lambda m: m["data"].__setitem__("image_size", "8x8"), False, "'data.image_size'"),
    ("channels 2", lambda m: m["data"].__setitem__("channels", 2), False, "'data.channels'"),
    ("data missing", lambda m: m.pop("data"), False, "'data' field required"),
    ("one class", lambda m: m["data"].__setitem__("classes", ["0"]), False, "'data.classes'"),
    (
        "duplicate classes",
        lambda m: m["data"].__setitem__("classes", ["0"] * 10),
        False,
        "class names distinct",
    ),
    ("kind unknown", lambda m: m.__setitem__("kind", "oracle"), False, "'kind'"),
    ("config not a mapping", lambda m: m.__setitem__("config", "lr=0.1"), False, "'config'"),
]


@pytest.mark.parametrize(
    ("what", "change", "keep_hash", "message"), CHECKPOINT_EDITS, ids=[c[0] for c in CHECKPOINT_EDITS]
)
def test_a_hand_edited_checkpoint_json_is_refused_in_one_line(
    student_run, tmp_path, capsys, what, change, keep_hash, message
):
    run = tmp_path / "run"
    shutil.copytree(student_run, run)
    for tag in ("best", "last"):
        meta = json.loads((run / f"{tag}.json").read_text())
        edited = _edit(meta, change)
        if not keep_hash:  # an editor who also dropped the hash: the shape check catches it
            edited.pop("content_sha256", None)
        (run / f"{tag}.json").write_text(json.dumps(edited))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, _, err = run_cli(["evaluate", run, "--split", "val"], capsys)
    assert message in _one_line(code, err)
    with pytest.raises(MtkdError, match="checkpoint"):
        mtkd.load_student(run)
    code, _, err = run_cli(
        ["train", "--dataset", "digits", "--epochs", "2", "--out", run, "--resume"], capsys
    )
    assert message in _one_line(code, err)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.suffix != ".lock"} == {
        p: b for p, b in before.items() if p.suffix != ".lock"
    }  # nothing written, nothing lost


@pytest.mark.parametrize("text", ["[1, 2]", '"best"', "null"])
def test_a_checkpoint_json_that_is_not_an_object_is_refused(student_run, tmp_path, capsys, text):
    run = tmp_path / "run"
    shutil.copytree(student_run, run)
    (run / "best.json").write_text(text)
    code, _, err = run_cli(["evaluate", run / "best.json"], capsys)
    assert "is not an mtkd checkpoint" in _one_line(code, err)


SUMMARY_EDITS = [
    (lambda s: s.pop("test_acc"), "'test_acc' field required"),
    (lambda s: s.__setitem__("val_acc", 1.5), "'val_acc'"),
    (lambda s: s.__setitem__("epochs", 0), "'epochs'"),
    (lambda s: s.__setitem__("params", "many"), "'params'"),
    (lambda s: s.__setitem__("kind", 3), "'kind'"),
]


@pytest.mark.parametrize(("change", "message"), SUMMARY_EDITS)
def test_a_damaged_summary_is_one_line_in_the_cli_the_api_and_a_study(
    student_run, tmp_path, capsys, change, message
):
    runs = tmp_path / "runs"
    shutil.copytree(student_run, runs / "run")
    path = runs / "run" / "summary.json"
    path.write_text(json.dumps(_edit(json.loads(path.read_text()), change)))
    code, _, err = run_cli(["summary", runs], capsys)
    line = _one_line(code, err)
    assert message in line and "summary.json is damaged" in line and "delete that run folder" in line
    from mtkd.api import _run

    with pytest.raises(MtkdError, match="is damaged"):
        _run(runs / "run")


def test_a_summary_that_is_not_an_object_is_refused(student_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(student_run, runs / "run")
    (runs / "run" / "summary.json").write_text("[]")
    code, _, err = run_cli(["summary", runs], capsys)
    assert "summary.json is damaged" in _one_line(code, err)


def test_a_checkpoint_rehashed_after_an_edit_is_read_and_its_content_checked(student_run, tmp_path):
    """The hash is not a signature: a JSON rewritten with a fresh hash is read, and its shape checked."""
    run = tmp_path / "run"
    shutil.copytree(student_run, run)
    meta = json.loads((run / "best.json").read_text())
    meta["data"]["mean"] = [0.1, 0.2]
    meta["content_sha256"] = content_hash(meta)
    (run / "best.json").write_text(json.dumps(meta))
    with pytest.raises(MtkdError, match="one value per channel"):
        mtkd.load_student(run)


# -- the CLI's options out of range ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict", "RUN", "IMG", "--top-k", "-1"], "--top-k must be a whole number >= 1, got -1"),
        (["predict", "RUN", "IMG", "--top-k", "0"], "--top-k must be a whole number >= 1, got 0"),
        (
            ["export", "RUN", "--out", "OUT", "--opset", "999"],
            "--opset 999: this torch exports ONNX opsets 9 to",
        ),
        (["export", "RUN", "--out", "OUT", "--opset", "3"], "--opset 3: this torch exports ONNX opsets 9 to"),
    ],
)
def test_cli_options_out_of_range(student_run, tmp_path, capsys, args, message):
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "img.png")
    subs = {"RUN": str(student_run), "IMG": str(tmp_path / "img.png"), "OUT": str(tmp_path / "m.onnx")}
    code, _, err = run_cli([subs.get(a, a) for a in args], capsys)
    assert message in _one_line(code, err)
    assert not (tmp_path / "m.onnx").exists()


# -- study configs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("seeds: [true, false]", "seeds must be whole numbers, not true/false"),
        ("students: []", "'students': is empty"),
        ("seeds: []", "seeds must be a non-empty list"),
        ("teachers: [{checkpoint: STUDENT}]", "is a student run, not an adapted teacher"),
    ],
)
def test_study_judgement_calls_are_refused_before_anything_runs(
    student_run, tmp_path, capsys, yaml_text, message
):
    _study_refused(tmp_path, capsys, yaml_text.replace("STUDENT", str(student_run)), message)


def _study_refused(tmp_path, capsys, yaml_text: str, message: str) -> None:
    """`mtkd study` on a digits study with `yaml_text` added: one line with `message`, no folder."""
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: s\noutput: {tmp_path / 'out'}\ndata: {{name: digits}}\n{yaml_text}\n")
    code, _, err = run_cli(["study", spec], capsys)
    assert message in _one_line(code, err)
    assert not (tmp_path / "out").exists()


def test_a_folder_of_one_class_is_refused(tmp_path, capsys):
    from PIL import Image

    for split in ("train", "test"):
        (tmp_path / "data" / split / "cat").mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(
                tmp_path / "data" / split / "cat" / f"{i}.png"
            )
    code, _, err = run_cli(
        ["train", "--dataset", f"folder:{tmp_path / 'data'}", "--out", tmp_path / "run"], capsys
    )
    assert "has 1 class(es) (cat): a classifier needs at least 2" in _one_line(code, err)
    assert not (tmp_path / "run").exists()


def test_an_image_over_pils_bomb_limit_is_said_in_one_line_not_as_a_raw_warning(
    tmp_path, monkeypatch, caplog
):
    import warnings

    from PIL import Image

    from mtkd.data.images import open_image

    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1,600 pixels: over the limit, under twice it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a raw warning would fail here
        img = open_image(tmp_path / "big.png")
    assert (
        img.size == (40, 40) and "over PIL's decompression-bomb limit (1,000): decoded anyway" in caplog.text
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(mean=[0.5], std=[0.0]), "std must be positive and finite (it divides the pixels)"),
        (dict(mean=[0.5], std=[float("inf")]), "std must be positive and finite"),
        (dict(mean=[0.5, 0.5], std=[0.2, 0.2]), "need 1 or 3 values each, got 2 and 2"),
        (dict(mean=["a"], std=[0.2]), "must be lists of numbers"),
        (dict(mean=[0.5]), "mean and std go together"),
        (dict(input_size=0), "input_size must be a whole number from 4 to 1024, got 0"),
        (dict(input_size=True), "input_size must be a whole number from 4 to 1024, got True"),
    ],
)
def test_a_teacher_module_with_bad_preprocessing_is_refused_when_made(kwargs, message):
    with pytest.raises(MtkdError) as err:
        mtkd.ModuleTeacher(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), **kwargs)
    assert message in str(err.value)


def test_a_teacher_module_that_is_not_a_module_is_refused():
    with pytest.raises(MtkdError, match="ModuleTeacher takes an nn.Module, got str"):
        mtkd.ModuleTeacher("mobilenet_v2")


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("students: [{model: {name: cnn_small}, label: ../up}]", "study student label '../up' is a path"),
        ("students: [{model: {name: cnn_small}, label: '...'}]", "has no letters or digits"),
        ("methods: [none, {name: kd, label: '..'}]", "study method label '..' cannot name a folder"),
        ("methods: [none, '..']", "study method '..' cannot name a folder"),
        ("teachers: [{name: mobilenet_v2, label: a/b}]", "study teacher label 'a/b' is a path"),
    ],
)
def test_labels_that_become_folders_are_not_paths(tmp_path, capsys, yaml_text, message):
    _study_refused(tmp_path, capsys, yaml_text, message)
