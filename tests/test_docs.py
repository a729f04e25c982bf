"""Documentation stays true: generated references match the code, README commands run as written."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from docs.generate import cards_markdown, cli_markdown
from tests.conftest import REPO


def test_card_reference_is_current():
    assert (REPO / "docs/cards.md").read_text() == cards_markdown(), "run `python -m docs.generate`"


def test_cli_reference_is_current():
    assert (REPO / "docs/cli.md").read_text() == cli_markdown(), "run `python -m docs.generate`"


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("make "):  # make targets are what CI itself runs
                cmds.append(line)
    return cmds


@pytest.mark.parametrize("command", _readme_commands())
def test_readme_command_runs(command, tmp_path):
    """Each README command, run from a scratch copy of the paths it names, exits 0."""
    for name in ("tests", "cards"):
        os.symlink(REPO / name, tmp_path / name)
    os.symlink(REPO / ".venv", tmp_path / ".venv")
    args = shlex.split(command)
    args[0] = args[0].replace(".venv/bin/unfoldmem", sys.executable)
    if args[0] == sys.executable:
        args.insert(1, "-m")
        args.insert(2, "unfoldmem")
    res = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
