"""The documentation runs as written: every command and Python block of README.md and docs/*.md.

Blocks are fenced code. ```bash / ```sh / ```shell blocks are commands, one per line (``\\``
continues a line); ```console blocks are commands on ``$ `` lines followed by their output;
```python blocks are run as scripts. A yaml or python block whose first line is
``# file: NAME`` is a file the reader is told to write: it is written to NAME at that point of
the page and not run. ```text (and yaml, json without ``# file:``) is output or illustration,
never run. ``make`` lines are not run here: the make targets are what CI itself runs.

Fast (``make test``): every block parses, every ``unfoldmem`` command (in executed blocks, in
``$ unfoldmem`` / ``unfoldmem`` lines of text and indented blocks and in inline code) names an existing verb
and only options that verb has, executed commands parse with the typer app's own click parser
(arguments, option values, choices), repository paths they name exist, and every card written
by a page validates. The README's commands also run (they take seconds).

Slow (``make validate``): each page runs in order, from a scratch working copy (``cards/``,
``docs/``, ``examples/``, ``tests/`` and ``benchmarks/`` copied, ``.venv`` linked; ``unfoldmem``
and ``python`` on PATH are the venv's), every command exiting 0; the blocks of one page share
that directory, so later blocks use earlier outputs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import typer.main

from tests.conftest import REPO
from unfoldmem.cli import app

SHELL = frozenset({"bash", "sh", "shell", "console"})
NOT_RUN = frozenset({"text", "yaml", "json", "toml", "ini", ""})
COPIED = ("cards", "docs", "examples", "tests", "benchmarks")
# Pages whose commands build on each other the way a reader follows them come first.
FIRST = ("README.md", "docs/getting-started.md", "docs/howto-own-data.md")
PAGES = (*FIRST, *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")
                         if str(p.relative_to(REPO)) not in FIRST))
FAST_PAGES = ("README.md",)  # seconds: part of `make test`
# Pages edited by other helpers when this test was extended; their owners label the fences.
UNLABELLED_PENDING: frozenset[str] = frozenset()
_OPERATORS = frozenset({"|", "||", "&&", ";", ">", ">>", "<", "2>", "&"})
_PLACEHOLDER = re.compile(r"[A-Z_]+|\.\.\.|…")


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced block of a page: its language, body and 1-based line of the opening fence."""

    page: str
    lang: str
    body: str
    line: int

    @property
    def file_name(self) -> str | None:
        """NAME when the first line is ``# file: NAME`` (a file the reader writes)."""
        first = self.body.partition("\n")[0]
        m = re.fullmatch(r"#\s*file:\s*(\S+)\s*", first)
        return m.group(1) if m else None

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def page_blocks(text: str, page: str = "<text>") -> list[Block]:
    """Every fenced block of a markdown text, in order (``` fences at any indentation)."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^(\s*)(`{3,})\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        indent, fence = len(m.group(1)), m.group(2)
        body, j = [], i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            line = lines[j]
            body.append(line[indent:] if not line[:indent].strip() else line.lstrip())
            j += 1
        blocks.append(Block(page, m.group(3).lower(), "\n".join(body) + "\n", i + 1))
        i = j + 1
    return blocks


def _logical_lines(body: str) -> list[str]:
    """Lines with ``\\`` continuations joined."""
    return body.replace("\\\n", " ").splitlines()


def block_commands(block: Block) -> list[str]:
    """The commands a shell block runs, one per logical line (comments and ``make`` dropped)."""
    if block.lang == "console":
        cmds, lines = [], block.body.splitlines()
        for k, line in enumerate(lines):
            if not line.startswith("$ "):
                continue
            cmd, n = line[2:], k
            while cmd.rstrip().endswith("\\") and n + 1 < len(lines):
                n += 1
                cmd = cmd.rstrip()[:-1] + " " + lines[n].strip()
            cmds.append(cmd.strip())
    else:
        cmds = [line.strip() for line in _logical_lines(block.body)]
    return [c for c in cmds
            if c and not c.startswith("#") and not re.match(r"make(\s|$)", c)]


def executed(block: Block) -> bool:
    """A shell block, or a python block that is not a ``# file:`` block."""
    return block.file_name is None and (block.lang in SHELL or block.lang == "python")


# ---------------------------------------------------------------------------------------------
# Static checks against the typer app


_ROOT = typer.main.get_command(app)


def _words(command: str) -> list[str]:
    """shlex words of a command, cut at the first shell operator."""
    words = shlex.split(command, comments=True)
    for k, w in enumerate(words):
        if w in _OPERATORS:
            return words[:k]
    return words


def _unfoldmem_args(words: list[str]) -> list[str] | None:
    """The arguments after the unfoldmem executable, or None when it is another program."""
    if not words:
        return None
    if words[0] in ("unfoldmem", ".venv/bin/unfoldmem"):
        return words[1:]
    if len(words) > 2 and words[0].endswith(("python", "python3")) and words[1:3] == ["-m", "unfoldmem"]:
        return words[3:]
    return None


def _resolve(args: list[str]):
    """Walk the groups (parsing their options) to the command the args name.

    Returns (command, name path, context, group options or None for a leaf command, the rest).
    """
    cmd, path, ctx, rest = _ROOT, ["unfoldmem"], None, list(args)
    while hasattr(cmd, "commands"):
        ctx = cmd.context_class(cmd, info_name=path[-1], parent=ctx)
        opts, rest, _ = cmd.make_parser(ctx).parse_args(list(rest))
        if not rest:
            return cmd, path, ctx, opts, rest
        name = rest[0]
        if name not in cmd.commands:
            raise LookupError(f"no command `{' '.join(path)} {name}`")
        cmd, path, rest = cmd.commands[name], [*path, name], rest[1:]
    ctx = cmd.context_class(cmd, info_name=path[-1], parent=ctx)
    return cmd, path, ctx, None, rest


def check_unfoldmem_command(args: list[str]) -> list[str]:
    """Problems of one unfoldmem command line, parsed by the app's own click parser, not run."""
    try:
        cmd, path, ctx, opts, rest = _resolve(args)
        if opts is not None:  # a group alone (e.g. `unfoldmem --help`): fine
            return []
        opts, extra, _ = cmd.make_parser(ctx).parse_args(list(rest))
    except LookupError as exc:
        return [str(exc)]
    except Exception as exc:  # click's UsageError family, from typer's vendored click
        return [f"{type(exc).__name__}: {exc}"]
    if opts.get("help"):
        return []
    problems = []
    if extra:
        problems.append(f"`{' '.join(path)}`: unexpected extra arguments {extra}")
    for p in cmd.params:
        value = opts.get(p.name)
        if value is None:
            if p.required:
                problems.append(f"`{' '.join(path)}`: missing {p.name.upper()}")
            continue
        problems += [f"`{' '.join(path)}`: {m}" for m in _value_problems(p, value)]
    return problems


def _value_problems(param, value) -> list[str]:
    """Choices and numbers checked as typer would convert them (paths are not opened)."""
    td = getattr(param, "type_descriptor", None)
    values = value if isinstance(value, list | tuple) else [value]
    if td is None or not all(isinstance(v, str) for v in values):
        return []
    if td.is_choice:
        allowed = [getattr(c, "value", c) for c in td.choices]
        return [f"{param.name} {v!r} not one of {allowed}" for v in values if v not in allowed]
    problems = []
    if td.annotation in (int, float) or (td.is_list and typing_arg(td.annotation) in (int, float)):
        kind = td.annotation if td.annotation in (int, float) else typing_arg(td.annotation)
        for v in values:
            try:
                kind(v)
            except ValueError:
                problems.append(f"{param.name} {v!r} is not {kind.__name__}")
    return problems


def typing_arg(annotation) -> object:
    """The element type of list[X] (None otherwise)."""
    args = getattr(annotation, "__args__", ())
    return args[0] if len(args) == 1 else None


def _options_of(cmd) -> set[str]:
    ctx = cmd.context_class(cmd, info_name="x")
    return {o for p in cmd.get_params(ctx) for o in (*getattr(p, "opts", ()),
                                                       *getattr(p, "secondary_opts", ()))
            if o.startswith("-")}


def check_loose_mention(text: str) -> list[str]:
    """A synopsis or inline mention (`unfoldmem VERB ... [--opt X|Y]`): verb and options exist."""
    words = re.sub(r"[\[\]()|{}]", " ", text).split()
    if not words or words[0] != "unfoldmem":
        return []
    cmd, path = _ROOT, ["unfoldmem"]
    options = _options_of(cmd)
    k = 1
    while hasattr(cmd, "commands") and k < len(words):
        w = words[k]
        if w.startswith("-"):
            k += 1 + (w in ("--version",))
            continue
        if _PLACEHOLDER.fullmatch(w):
            return []  # `unfoldmem COMMAND --help`, `unfoldmem ...`
        if w not in cmd.commands:
            return [f"`{text}`: no command `{' '.join(path)} {w}`"]
        cmd, path = cmd.commands[w], [*path, w]
        options |= _options_of(cmd)
        k += 1
    problems = []
    for w in words[k:]:
        opt = w.split("=", 1)[0]
        if re.fullmatch(r"--?[a-zA-Z][\w-]*", opt) and opt not in options:
            problems.append(f"`{text}`: `{' '.join(path)}` has no option {opt}")
    return problems


_REPO_DIRS = ("cards/", "tests/", "examples/", "docs/", "benchmarks/")


def check_paths(words: list[str], written: set[str]) -> list[str]:
    """Repository paths a command names exist (or an earlier ``# file:`` block wrote them)."""
    problems = []
    for k, w in enumerate(words):
        if k and words[k - 1] in ("-o", "--output", "--out"):
            continue
        if w.startswith(_REPO_DIRS) and not (REPO / w).exists() and w not in written:
            problems.append(f"path {w} does not exist")
    return problems


def check_python_command(words: list[str], written: set[str]) -> list[str]:
    """`python SCRIPT` names an existing script, `python -m MODULE` an importable module."""
    if not words or not words[0].endswith(("python", "python3")) or len(words) < 2:
        return []
    if words[1] == "-m":
        mod = words[2]
        if mod == "unfoldmem":
            return []
        local = REPO / mod.replace(".", "/")
        if local.with_suffix(".py").exists() or (local / "__init__.py").exists():
            return []
        return [] if importlib.util.find_spec(mod.split(".")[0]) else [f"no module {mod}"]
    script = words[1]
    if script.startswith("-") or (REPO / script).exists() or script in written:
        return []
    return [f"no script {script}"]


def static_problems(page: str) -> list[str]:
    """Everything the fast test checks on one page, as messages naming page and line."""
    text = (REPO / page).read_text()
    problems, written = [], set()
    for block in page_blocks(text, page):
        if block.file_name:
            written.add(block.file_name)
        if block.lang not in SHELL | NOT_RUN | {"python"}:
            problems.append(f"{block.where}: unknown fence language {block.lang!r}")
        if not block.lang and page not in UNLABELLED_PENDING:
            problems.append(f"{block.where}: fence without a language: ```bash (run by this "
                            "test), ```python (run) or ```text (output, illustration)")
        if block.lang == "python" or (block.file_name or "").endswith(".py"):
            try:
                compile(block.body, block.where, "exec")
            except SyntaxError as exc:
                problems.append(f"{block.where}: python block does not parse: {exc}")
        if block.lang in SHELL and block.file_name is None:
            for command in block_commands(block):
                try:
                    words = _words(command)
                except ValueError as exc:
                    problems.append(f"{block.where}: `{command}`: {exc}")
                    continue
                args = _unfoldmem_args(words)
                msgs = check_unfoldmem_command(args) if args is not None else []
                msgs += check_paths(words, written) + check_python_command(words, written)
                problems += [f"{block.where}: `{command}`: {m}" for m in msgs]
        elif block.lang in NOT_RUN:
            for line in _logical_lines(block.body):
                line = line.strip().removeprefix("$ ")
                problems += [f"{block.where}: {m}" for m in check_loose_mention(line)]
    prose = re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.S | re.M)
    mentions = re.findall(r"`(unfoldmem [^`]+)`", prose)
    mentions += re.findall(r"^ {4,}(?:\$ )?(unfoldmem .+)$", prose, flags=re.M)  # indented code
    for span in mentions:
        problems += [f"{page}: {m}" for m in check_loose_mention(span)]
    return problems


# ---------------------------------------------------------------------------------------------
# Tests


def test_extraction_finds_commands():
    """The extractor sees what a reader sees (guards against a silently empty test)."""
    text = ("```bash\nunfoldmem inspect a.root \\\n  -b m.yaml   # comment\nmake demo\nls\n"
            ".venv/bin/python m.py\n```\n```yaml\n# file: c.yaml\nkind: run\n```\n"
            "```python\n# file: m.py\nprint(1)\n```\n```python\nimport os\n```\n"
            "```console\n$ unfoldmem fit ll.root \\\n      -o fit\nfit (minuit) valid\n```\n"
            "```text\n$ unfoldmem scan x\n```\n")
    blocks = page_blocks(text)
    assert [b.lang for b in blocks] == ["bash", "yaml", "python", "python", "console", "text"]
    assert block_commands(blocks[0]) == ["unfoldmem inspect a.root    -b m.yaml   # comment", "ls",
                                         ".venv/bin/python m.py"]
    assert _unfoldmem_args(_words(block_commands(blocks[0])[0])) == ["inspect", "a.root", "-b",
                                                                      "m.yaml"]
    assert block_commands(blocks[4]) == ["unfoldmem fit ll.root  -o fit"]
    assert [b.file_name for b in blocks] == [None, "c.yaml", "m.py", None, None, None]
    assert [executed(b) for b in blocks] == [True, False, False, True, True, False]
    for page in ("README.md", "docs/getting-started.md", "docs/howto-own-data.md",
                 "docs/inference.md"):
        cmds = [c for b in page_blocks((REPO / page).read_text()) if b.lang in SHELL
                for c in block_commands(b)]
        assert len(cmds) >= 3, page


def test_checker_catches_mistakes():
    """A wrong verb, option, choice, missing argument or extra argument is reported."""
    ok = ["inspect", "a.root", "-b", "m.yaml"]
    assert check_unfoldmem_command(ok) == []
    assert check_unfoldmem_command(["-q", "fit", "ll.root", "-o", "fit"]) == []
    assert check_unfoldmem_command(["cards", "check", "a.yaml", "b.yaml"]) == []
    assert check_unfoldmem_command(["--help"]) == []
    assert check_unfoldmem_command(["scan", "--help"]) == []
    assert check_unfoldmem_command(["simulate", "x"])  # no such verb
    assert check_unfoldmem_command(["scan", "ll.root", "--bogus"])
    assert check_unfoldmem_command(["scan", "ll.root", "-o"])  # option without its value
    assert check_unfoldmem_command(["scan"])  # missing LL
    assert check_unfoldmem_command(["fit", "ll.root", "extra.root"])
    assert check_unfoldmem_command(["generate", "r.yaml", "-o", "x.root", "--chain", "nope"])
    assert check_unfoldmem_command(["generate", "r.yaml", "-o", "x.root", "-n", "1e5"])
    assert check_loose_mention("unfoldmem scan ll.root [--workers N] [--overwrite]") == []
    assert check_loose_mention("unfoldmem COMMAND --help") == []
    assert check_loose_mention("unfoldmem scan ll.root [--nonsense N]")
    assert check_loose_mention("unfoldmem simulate x")
    assert check_paths(["unfoldmem", "xsec", "cards/processes/nope.yaml"], set())
    assert check_python_command(["python", "docs/nope.py"], set())
    assert check_python_command(["python", "-m", "benchmarks.bench_nis"], set()) == []


@pytest.mark.parametrize("page", PAGES)
def test_page_is_consistent(page):
    """Blocks parse, commands name existing verbs/options/paths, written cards validate."""
    problems = static_problems(page)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES)
def test_written_cards_validate(page, tmp_path):
    """Every ``# file:`` yaml card a page tells the reader to write loads as its kind."""
    from unfoldmem.cards import load_card

    for block in page_blocks((REPO / page).read_text(), page):
        name = block.file_name
        if name and name.endswith((".yaml", ".yml")) and "kind: process" not in block.body:
            # process cards may name a process registered by a user module (--module)
            path = tmp_path / Path(name).name
            path.write_text(block.body)
            kind = re.search(r"^kind:\s*(\w+)", block.body, flags=re.M)
            assert kind, f"{block.where}: card without kind"
            load_card(path, kind=kind.group(1))


def _working_copy(root: Path) -> dict[str, str]:
    """A scratch copy of the repository parts the pages use; the environment to run in."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "results.json")
    for name in COPIED:
        shutil.copytree(REPO / name, root / name, ignore=ignore)
    for name in ("README.md", "pyproject.toml", "Makefile"):
        shutil.copy(REPO / name, root / name)
    os.symlink(REPO / ".venv", root / ".venv")
    path = f"{root / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
            "PYTHONDONTWRITEBYTECODE": "1"}


def run_page(page: str, root: Path, timeout: float = 1200) -> None:
    """Run every block of ``page`` in order in ``root``; fail naming the first failing command."""
    env = _working_copy(root)
    for k, block in enumerate(page_blocks((REPO / page).read_text(), page)):
        if block.file_name:
            (root / block.file_name).write_text(block.body.partition("\n")[2])
            continue
        if not executed(block):
            continue
        if block.lang == "python":
            script = root / f"_doc_block_{k}.py"
            script.write_text(block.body)
            commands = [f"python {script.name}"]
        else:
            commands = block_commands(block)
        for command in commands:
            res = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", command], cwd=root,
                                 env=env, capture_output=True, text=True, timeout=timeout)
            assert res.returncode == 0, (
                f"{block.where}: `{command}` exited {res.returncode}:\n"
                f"{res.stdout[-1500:]}\n{res.stderr[-3000:]}")


@pytest.mark.parametrize("page", FAST_PAGES)
def test_fast_page_runs(page, tmp_path):
    """The README's commands run as written (seconds)."""
    run_page(page, tmp_path, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if p not in FAST_PAGES and any(
    executed(b) or b.file_name for b in page_blocks((REPO / p).read_text(), p))])
def test_page_runs(page, tmp_path):
    """Each page's commands and Python blocks, run in order from a scratch copy, exit 0."""
    run_page(page, tmp_path)
