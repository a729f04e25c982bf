"""Run the CLI in-process as a user would: argv in, exit code and one-line messages out."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    from unfoldmem.cli import main

    def run(*args: str) -> Result:
        monkeypatch.setattr(sys, "argv", ["unfoldmem", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run
