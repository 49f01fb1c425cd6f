"""Plugins: the example package under examples/ is pip-installed (editable) and its student,
teacher, method and dataset are found by name in fresh processes: the CLI, a training script,
and `mtkd evaluate` of a run whose student and data came from Python."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "mtkd-plugin-example"


@pytest.fixture(scope="module")
def plugin() -> None:
    """`pip install -e` the example plugin into this environment for the module's tests, then remove it."""
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    done = subprocess.run(
        [*pip, "install", "--no-deps", *isolation, "-e", str(PLUGIN)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    yield
    subprocess.run([*pip, "uninstall", "-y", "mtkd-plugin-example"], capture_output=True, text=True)


def fresh(args: list[str], home: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MTKD_HOME": str(home)}
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )


SCRIPT = """
import torch, mtkd
from torch import nn
from torch.utils.data import TensorDataset
from sklearn.datasets import load_digits
from mtkd_plugin_example import tiny_seq

d = load_digits()
x = torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None]   # float images in [0, 1]
y = torch.tensor(d.target)
train, test = TensorDataset(x[:1400], y[:1400]), TensorDataset(x[1400:], y[1400:])

class Teacher(nn.Module):                       # a custom teacher: a linear classifier on the pixels
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)
        a = torch.cat([x[:1400].flatten(1).double(), torch.ones(1400, 1, dtype=torch.float64)], 1)
        w = torch.linalg.lstsq(a, torch.eye(10, dtype=torch.float64)[y[:1400]] * 10).solution
        with torch.no_grad():
            self.fc.weight.copy_(w[:64].T.float()); self.fc.bias.copy_(w[64].float())
    def forward(self, images):
        return self.fc(images.flatten(1))

student = tiny_seq(10, 1)                        # a plain nn.Sequential, given with no name
assert isinstance(student, nn.Sequential) and not hasattr(student, "mtkd_name")
run = mtkd.train(student, teachers=[Teacher()], data=(train, test),
                 methods=["features", "avg_kd"], epochs=12, batch_size=64, out="run", progress=False)
print("TEST_ACC", run.test_acc)
"""


def test_a_run_from_python_is_evaluated_by_the_cli_in_a_fresh_process(plugin, tmp_path):
    """The student module and the TensorDatasets are recognised as the plugin's (same architecture;
    same images, labels and splits), so the run records them by name."""
    (tmp_path / "script.py").write_text(textwrap.dedent(SCRIPT))
    trained = fresh(["script.py"], tmp_path / "home", tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    test_acc = float(trained.stdout.split("TEST_ACC")[1])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["name"] == "tiny_seq" and summary["dataset"] == "digits_float" and test_acc > 0.5
    evaluated = fresh(["-m", "mtkd", "evaluate", "run"], tmp_path / "home", tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "eval-best-test.json").read_text())
    assert report["top1"] == pytest.approx(test_acc, abs=1e-6) and report["count"] == 397


def test_the_cli_trains_with_a_plugin_student_teacher_method_and_dataset(plugin, tmp_path):
    listed = fresh(["-m", "mtkd", "models"], tmp_path / "home", tmp_path)
    assert "tiny_seq" in listed.stdout
    args = ["-m", "mtkd", "train", "--model", "tiny_seq", "--dataset", "digits_float", "--teachers", "[digits_logreg]",
            "--methods", "[logit_mse, features]", "--epochs", "2", "--out", "run", "--set", "output.progress=false"]  # fmt: skip
    done = fresh(args, tmp_path / "home", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "train_logit_mse" in header and "train_features" in header
    # The plugin teacher (logistic regression on the pixels) is a real one.
    check = fresh(["-c", textwrap.dedent("""
        import torch, mtkd
        from mtkd_plugin_example import digits_float, digits_logreg
        _, test = digits_float()
        teacher = digits_logreg().bind(1, (8, 8))
        x, y = test.tensors
        print((teacher(x).argmax(1) == y).float().mean().item())
    """)], tmp_path / "home", tmp_path)  # fmt: skip
    assert check.returncode == 0, check.stderr[-2000:]
    assert float(check.stdout) > 0.9


def test_without_the_plugin_the_error_says_what_is_missing(tmp_path):
    """An evaluation of a run whose data came from Python, where no plugin provides it."""
    import torch
    from sklearn.datasets import load_digits
    from torch.utils.data import TensorDataset

    import mtkd

    d = load_digits()
    x, y = torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None], torch.tensor(d.target)
    run = mtkd.train("cnn_small", data=(TensorDataset(x[:1400], y[:1400]), TensorDataset(x[1400:], y[1400:])),
                     dataset="my_photos", epochs=1, out=tmp_path / "r", progress=False)  # fmt: skip
    done = fresh(["-m", "mtkd", "evaluate", str(run.folder)], tmp_path / "home", tmp_path)
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "was trained on data given from Python ('my_photos'), which no dataset plugin provides here: "
            "pass --data NAME (CLI) or data= (mtkd.evaluate)"
        )
    )


def test_a_study_plans_with_plugin_components(plugin, tmp_path):
    """Every run's config of a study naming a plugin student, method and dataset validates in a fresh process."""
    (tmp_path / "study.yaml").write_text(textwrap.dedent("""
        name: plugins
        output: study
        data: {name: digits_float}
        seeds: [0, 1]
        students: [tiny_seq, cnn_small]
        teachers: [mobilenet_v2]
        teacher_fit: {teacher: {input_size: 32}}
        methods: [none, logit_mse]
    """))  # fmt: skip
    done = fresh(["-m", "mtkd", "study", "study.yaml", "--plan"], tmp_path / "home", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    commands = [line for line in done.stdout.splitlines() if line.startswith("mtkd ")]
    assert len(commands) == 1 + 2 * 2 * 2  # the teacher fit, then 2 students x 2 methods x 2 seeds
    spec = yaml.safe_load(next((tmp_path / "study").rglob("tiny_seq*/**/job.yaml")).read_text())
    assert spec["model"]["name"] == "tiny_seq" and spec["data"]["name"] == "digits_float"


SHADOW = '''
"""A plugin that registers names mtkd already has: a student `cnn_small` and a dataset `digits`."""
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset


def cnn_small(num_classes, in_chans):
    """the plugin's cnn_small: one Linear on the pixels"""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * 64, num_classes))


def digits():
    """the plugin's digits: 0 against 1 only"""
    d = load_digits()
    keep = d.target < 2
    x = torch.tensor(d.images[keep] / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(d.target[keep])
    return TensorDataset(x[:300], y[:300]), TensorDataset(x[300:], y[300:])
'''


def test_a_plugin_that_shadows_a_builtin_wins_everywhere_with_one_warning(tmp_path):
    """Installed (a dist-info with entry points on the path), a plugin's `cnn_small` and `digits`
    replace mtkd's in `mtkd models`, `mtkd datasets`, `mtkd train` and the API alike, each said
    once."""
    site = tmp_path / "site"
    info = site / "shadow_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "shadow_plugin.py").write_text(SHADOW)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shadow-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[mtkd.students]\ncnn_small = shadow_plugin:cnn_small\n\n[mtkd.datasets]\ndigits = shadow_plugin:digits\n"
    )
    env = {**os.environ, "MTKD_HOME": str(tmp_path / "home"), "PYTHONPATH": str(site)}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=600)  # fmt: skip

    models = run("-m", "mtkd", "models")
    assert models.returncode == 0, models.stderr
    assert "the plugin's cnn_small" in models.stdout
    assert models.stderr.count("student 'cnn_small' is registered twice") == 1
    datasets = run("-m", "mtkd", "datasets")
    assert "the plugin's digits" in datasets.stdout or "shadow_plugin" in datasets.stdout, datasets.stdout
    cli = run("-m", "mtkd", "train", "--model", "cnn_small", "--dataset", "digits", "--epochs", "1",
              "--out", "cli", "--set", "output.progress=false")  # fmt: skip
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert cli.stderr.count("is registered twice") == 2  # the student and the dataset, once each
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["params"] == 64 * 2 + 2 and summary["classes"] == ["0", "1"]
    api = run("-c", "import mtkd, json; r = mtkd.train('cnn_small', data='digits', epochs=1, out='api', "
                    "progress=False); print(json.dumps([r.summary['params'], r.summary['classes']]))")  # fmt: skip
    assert api.returncode == 0, api.stderr[-2000:]
    assert json.loads(api.stdout.strip().splitlines()[-1]) == [130, ["0", "1"]]
