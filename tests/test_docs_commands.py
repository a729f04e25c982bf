"""The user guides run as written: every command of their bash blocks exits 0.

The ``unfoldmem`` (and ``.venv/bin/python``) lines of the bash blocks of
``docs/getting-started.md`` and ``docs/howto-own-data.md`` are run in order, as a user types
them, in one scratch directory per page (``tests/``, ``cards/`` and ``examples/`` linked in).
A yaml or python block whose first line is ``# file: NAME`` is a file the reader is told to
write; it is written to NAME before the page's commands run.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PAGES = ("docs/getting-started.md", "docs/howto-own-data.md")
_PREFIXES = ("unfoldmem ", ".venv/bin/unfoldmem ", ".venv/bin/python ")


def page_commands(text: str) -> list[str]:
    """The lines of ```bash blocks that start with one of _PREFIXES (continuations joined)."""
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            line = line.strip()
            if line.startswith(_PREFIXES):
                cmds.append(line)
    return cmds


def page_files(text: str) -> dict[str, str]:
    """``# file: NAME`` yaml and python blocks: NAME → content."""
    out = {}
    for block in re.findall(r"```(?:yaml|python)\n(.*?)```", text, flags=re.S):
        first, _, rest = block.partition("\n")
        m = re.fullmatch(r"#\s*file:\s*(\S+)\s*", first)
        if m:
            out[m.group(1)] = rest
    return out


def _argv(command: str) -> list[str]:
    args = shlex.split(command, comments=True)
    if args[0] == ".venv/bin/python":
        return [sys.executable, *args[1:]]
    return [sys.executable, "-m", "unfoldmem", *args[1:]]


def test_extraction_finds_commands():
    """The extractor sees the commands a reader sees (guards against a silently empty test)."""
    text = "```bash\nunfoldmem inspect a.root \\\n  -b m.yaml   # comment\nls\n" \
           ".venv/bin/python m.py\n```\n```yaml\n# file: c.yaml\nkind: run\n```\n" \
           "```python\n# file: m.py\nprint(1)\n```\n```python\nimport os\n```\n"
    cmds = page_commands(text)
    assert cmds == ["unfoldmem inspect a.root    -b m.yaml   # comment", ".venv/bin/python m.py"]
    assert _argv(cmds[0])[1:] == ["-m", "unfoldmem", "inspect", "a.root", "-b", "m.yaml"]
    assert _argv(cmds[1]) == [sys.executable, "m.py"]
    assert page_files(text) == {"c.yaml": "kind: run\n", "m.py": "print(1)\n"}
    for page in PAGES:
        assert len(page_commands((REPO / page).read_text())) >= 3, page


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_page_commands_run(page, tmp_path):
    """Each command of the page, run in order from a scratch directory, exits 0."""
    text = (REPO / page).read_text()
    for name in ("tests", "cards", "examples"):
        os.symlink(REPO / name, tmp_path / name)
    for name, content in page_files(text).items():
        Path(tmp_path / name).write_text(content)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    for command in page_commands(text):
        res = subprocess.run(_argv(command), cwd=tmp_path, capture_output=True, text=True,
                             timeout=900, env=env)
        assert res.returncode == 0, f"`{command}` exited {res.returncode}:\n{res.stderr[-2000:]}"
