"""The README's Python API examples run as written, in order, in a fresh process from an empty folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_api_blocks() -> list[str]:
    text = README.read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_python_api_section_runs(tmp_path):
    blocks = python_api_blocks()
    assert len(blocks) >= 4
    (tmp_path / "readme.py").write_text("\n".join(blocks))
    env = {**os.environ, "MTKD_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "readme.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    teacher = float(next(line for line in lines if line.startswith("teacher:")).split()[1])
    student = float(next(line for line in lines if line.startswith("student:")).split()[1])
    assert teacher > 0.6 and student > 0.5
    assert lines[-1] in ("Yes", "No", "Not settled")
