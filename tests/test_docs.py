"""The documentation agrees with the repository: links and images point at files that exist, every file in
docs/ is linked from a page, and every `alexnet` command in a code block names a subcommand and options the
command line has."""

import argparse
import re
import shlex
from pathlib import Path

import pytest

from alexnet.cli import _parser
from alexnet.model import ARCHS

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
SHELL = ("", "bash", "sh", "shell", "console")  # the code blocks whose lines are commands


def links(page: Path) -> list[str]:
    """The targets of the page's Markdown links and images, outside code blocks."""
    return LINK.findall(FENCE.sub("", page.read_text()))


def local(target: str) -> str | None:
    """The file part of a link into the repository; None for a web address or an anchor on the same page."""
    if re.match(r"[a-z]+://", target) or target.startswith(("#", "mailto:")):
        return None
    return target.split("#")[0]


def commands(page: Path) -> list[list[str]]:
    """The words of every `alexnet` command in the page's shell code blocks (after `alexnet`, `-m alexnet`
    or `.venv/bin/alexnet`), up to a comment or the end of the command."""
    found = []
    for language, block in FENCE.findall(page.read_text()):
        if language not in SHELL:
            continue
        for line in block.splitlines():
            for part in re.split(r"&&|;|\|(?!\|)", line.split(" #")[0]):
                try:
                    words = shlex.split(part, comments=True)
                except ValueError:
                    continue
                for i, word in enumerate(words):
                    if word in ("alexnet", ".venv/bin/alexnet"):
                        found.append(words[i + 1:])
                        break
    return [w for w in found if w]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """A parser's subcommands by name."""
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def missing_targets(page: Path) -> list[str]:
    """The page's links and images whose file does not exist."""
    return [t for t in links(page) if local(t) and not (page.parent / local(t)).exists()]


def unknown_commands(page: Path) -> list[str]:
    """The page's `alexnet` commands that name a subcommand or an option the command line does not have."""
    top, wrong = subcommands(_parser()), []
    for words in commands(page):
        parser, rest = top.get(words[0]), words[1:]
        if parser is not None and subcommands(parser) and rest and not rest[0].startswith("-"):
            parser, rest = subcommands(parser).get(rest[0]), rest[1:]
        known = {s for a in parser._actions for s in a.option_strings} if parser else set()
        if parser is None or any(w.startswith("--") and w.split("=")[0] not in known for w in rest):
            wrong.append(" ".join(words))
    return wrong


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_and_image_points_at_a_file(page):
    assert missing_targets(page) == []


def test_every_file_in_docs_is_linked_from_a_page():
    linked = {(page.parent / local(t)).resolve() for page in PAGES for t in links(page) if local(t)}
    assert [f.name for f in sorted((ROOT / "docs").iterdir()) if f.resolve() not in linked] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_commands_in_code_blocks_exist(page):
    assert unknown_commands(page) == []


def unlisted_modules(layout: str, package: Path) -> list[str]:
    """The package's source files (below the package, without __init__.py) that the layout does not name."""
    files = [f for f in sorted(package.rglob("*")) if f.suffix in (".py", ".cpp") and not f.name.startswith("__")]
    return [str(f.relative_to(package)) for f in files if f.name not in layout]


def test_the_design_pages_layout_names_every_module_and_architecture():
    design = (ROOT / "docs" / "design.md").read_text()
    assert unlisted_modules(design.split("## Layout")[1], ROOT / "alexnet") == []
    for page in ("design.md", "formats.md"):
        assert all(arch in (ROOT / "docs" / page).read_text() for arch in ARCHS), page


def test_the_checks_find_what_they_look_for(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "x.png").write_bytes(b"")
    page = tmp_path / "page.md"
    page.write_text("![a](docs/x.png) [b](https://example.org) [c](#here) [e](docs/y.png#top)\n```bash\n"
                    "alexnet train --data S --epochs 2  # a comment --nothing\n"
                    "torchrun --nproc_per_node 2 -m alexnet eval R --crops 10 && alexnet predict R a.jpg --fast\n"
                    "alexnet experiment lrn --data D --epoch 3\n.venv/bin/alexnet trian\n"
                    "```\n```python\nfrom alexnet import build_model\n```\n[d](`not a link`)\n")
    assert links(page) == ["docs/x.png", "https://example.org", "#here", "docs/y.png#top"]
    assert [local(t) for t in links(page)] == ["docs/x.png", None, None, "docs/y.png"]
    assert missing_targets(page) == ["docs/y.png#top"]
    assert commands(page) == [["train", "--data", "S", "--epochs", "2"], ["eval", "R", "--crops", "10"],
                              ["predict", "R", "a.jpg", "--fast"], ["experiment", "lrn", "--data", "D", "--epoch", "3"],
                              ["trian"]]
    assert unknown_commands(page) == ["predict R a.jpg --fast", "experiment lrn --data D --epoch 3", "trian"]
    (tmp_path / "pkg" / "csrc").mkdir(parents=True)
    for name in ("__init__.py", "a.py", "csrc/b.cpp", "csrc/c.cpp"):
        (tmp_path / "pkg" / name).write_text("")
    assert unlisted_modules("a.py  csrc/  b.cpp", tmp_path / "pkg") == ["csrc/c.cpp"]
