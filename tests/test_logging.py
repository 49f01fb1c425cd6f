"""mtkd's messages go through Python's logging (logger "mtkd"): a program's own handler gets them
as plain text, rank 0 only under torchrun, and raising the level quiets mtkd."""

from __future__ import annotations

import logging

from conftest import run_cli
from mtkd.console import say


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_messages_reach_a_programs_handler_without_markup(capsys, monkeypatch):
    log = logging.getLogger("mtkd")
    records = _Records()
    log.addHandler(records)
    try:
        say("[bold]cnn_small[/bold] on digits: test acc 0.9512")
        assert records.messages == ["cnn_small on digits: test acc 0.9512"]
        assert "cnn_small on digits: test acc 0.9512" in capsys.readouterr().err  # still on the console
        monkeypatch.setenv("RANK", "1")  # another process of a torchrun job: silent
        say("from rank 1")
        assert records.messages[-1] != "from rank 1" and "from rank 1" not in capsys.readouterr().err
        monkeypatch.setenv("RANK", "0")
        log.setLevel(logging.WARNING)  # a program that wants mtkd quiet
        say("quiet")
        assert "quiet" not in records.messages and "quiet" not in capsys.readouterr().err
    finally:
        log.setLevel(logging.INFO)
        log.removeHandler(records)


def test_a_cli_run_logs_its_result(capsys, tmp_path):
    log = logging.getLogger("mtkd")
    records = _Records()
    log.addHandler(records)
    try:
        code, _, _ = run_cli(
            ["train", "--dataset", "digits", "--epochs", "1", "--out", tmp_path / "run"], capsys
        )
        assert code == 0
        assert any(m.startswith("cnn_small on digits: test acc ") for m in records.messages), records.messages
        assert not any("[bold]" in m for m in records.messages)
    finally:
        log.removeHandler(records)
