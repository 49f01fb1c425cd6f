"""Shared fixtures: an isolated MTKD_HOME and small helpers to run the CLI."""

from __future__ import annotations

import pytest

from mtkd.cli.main import main


@pytest.fixture(autouse=True, scope="session")
def _mtkd_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    mp = pytest.MonkeyPatch()
    mp.setenv("MTKD_HOME", str(tmp_path_factory.mktemp("mtkd-home")))
    yield
    mp.undo()


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Run `mtkd ARGS` in-process: (exit status, stdout, stderr)."""
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
