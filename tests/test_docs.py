"""The docs' and the README's examples run as written: each page's Python blocks in order in one
fresh process, its shell blocks in order in one bash, its `console` blocks compared line by line,
from an empty folder. A block preceded by `<!-- not run: REASON -->` is skipped, and must say why.
`mkdocs build --strict` (broken links, anchors and references fail) runs here too."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
BLOCK = re.compile(r"(?:<!-- not run: (?P<why>[^>]*?) -->\n)?```(?P<lang>[\w-]*)\n(?P<code>.*?)```", re.S)


def blocks(page: Path, lang: str) -> list[str]:
    return [m["code"] for m in BLOCK.finditer(page.read_text()) if m["lang"] == lang and m["why"] is None]


def _env(tmp_path: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "MTKD_HOME": str(tmp_path / "home"), "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def _folder(tmp_path: Path) -> Path:
    """An empty folder with the repository's configs beside it, as in a clone."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "configs").symlink_to(ROOT / "configs")
    return work


def test_every_skipped_block_says_why():
    skipped = [
        (p.name, m["why"]) for p in PAGES for m in BLOCK.finditer(p.read_text()) if m["why"] is not None
    ]
    assert all(why.strip() for _, why in skipped)
    assert len(skipped) <= 8, skipped  # the few that are whole jobs or need other machines


def test_every_yaml_block_parses():
    for page in PAGES:
        for code in blocks(page, "yaml"):
            assert isinstance(yaml.safe_load(code), dict), f"{page.name}: {code[:80]}"


def test_every_methods_yaml_block_configures_its_method():
    """The generated YAML of each method (the docs' methods page) is accepted by the config."""
    from mtkd.engine.config import TrainConfig, build_config
    from mtkd.methods import METHODS
    from mtkd.methods.catalog import yaml_block

    for name in METHODS.names():
        entry = yaml.safe_load(yaml_block(name))["transfer"]["methods"][0]
        if "..." in entry.values() or None in [v for k, v in entry.items() if k.endswith("_layer")]:
            continue  # required options (hint's layers) are the user's to fill in
        cfg = build_config(TrainConfig, overrides={"transfer.methods": [entry]})
        assert cfg.transfer.method_specs()[0][0] == name


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "python")], ids=lambda p: p.name)
def test_python_examples_run(page, tmp_path):
    work = _folder(tmp_path)
    (work / "example.py").write_text("\n".join(blocks(page, "python")))
    done = subprocess.run([sys.executable, "example.py"], cwd=work, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=1200)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    if page.name == "python.md":  # the page's numbers are real: a taught student that learned
        lines = done.stdout.splitlines()
        teacher = float(next(line for line in lines if line.startswith("teacher:")).split()[1])
        student = float(next(line for line in lines if line.startswith("student:")).split()[1])
        assert teacher > 0.6 and student > 0.5
        assert lines[-1] in ("Yes", "No", "Not settled")


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "bash")], ids=lambda p: p.name)
def test_shell_examples_run(page, tmp_path):
    work = _folder(tmp_path)
    script = "set -euo pipefail\n" + "\n".join(blocks(page, "bash"))
    done = subprocess.run(["bash", "-c", script], cwd=work, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=1200)  # fmt: skip
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "console")], ids=lambda p: p.name)
def test_console_examples_print_what_they_show(page, tmp_path):
    work = _folder(tmp_path)
    for code in blocks(page, "console"):
        for command, shown in re.findall(r"^\$ (.*)\n((?:(?!\$ ).*\n)*)", code, flags=re.M):
            done = subprocess.run(["bash", "-c", command], cwd=work, env=_env(tmp_path), capture_output=True,
                                  text=True, timeout=300)  # fmt: skip
            assert (done.stdout + done.stderr).strip() == shown.strip(), command


def test_the_docs_build_strict(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    if not mkdocs.exists() and shutil.which("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([str(mkdocs if mkdocs.exists() else "mkdocs"), "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    html = (tmp_path / "site" / "methods" / "index.html").read_text()
    text = re.sub(r"<[^>]+>", "", html)
    for name in ("features", "camkd", "dkd", "hint"):  # the generated table and option blocks
        assert f'href="#{name}"' in html and f"name: {name}" in text


def test_the_readme_links_to_files_that_exist():
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text)
    assert len(targets) >= 10
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, missing
