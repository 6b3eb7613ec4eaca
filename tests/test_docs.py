"""The documentation agrees with the repository: links and images point at files and headings that exist, every
file in docs/ is linked from a page, every test a page names exists, every `alexnet` command in a code block or in
inline code names a subcommand and options the command line has, and the README stays a short guide."""

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
INLINE = re.compile(r"`([^`\n]+)`")
HEADING = re.compile(r"^#{1,6} (.+)$", re.M)
CITATION = re.compile(r"docs/(\w+\.md)#([\w-]+)")  # a code comment's or docstring's link into a page
TEST = re.compile(r"tests/(test_\w+\.py)::(test_\w+)")  # a page's reference to the test that holds a claim
SHELL = ("", "bash", "sh", "shell", "console")  # the code blocks whose lines are commands
README_LIMIT = 15_000  # characters: the README is a guide to the present; detail lives in docs/


def links(page: Path) -> list[str]:
    """The targets of the page's Markdown links and images, outside code blocks."""
    return LINK.findall(FENCE.sub("", page.read_text()))


def local(target: str) -> str | None:
    """The file part of a link into the repository; None for a web address or an anchor on the same page."""
    if re.match(r"[a-z]+://", target) or target.startswith(("#", "mailto:")):
        return None
    return target.split("#")[0]


def anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of the page's headings, outside code blocks."""
    return {anchor(h) for h in HEADING.findall(FENCE.sub("", page.read_text()))}


def commands(page: Path, inline: bool = False) -> list[list[str]]:
    """The words of every `alexnet` command in the page's shell code blocks, and with `inline` in its inline code
    (after `alexnet`, `-m alexnet` or `.venv/bin/alexnet`), up to a comment or the end of the command."""
    text = page.read_text()
    lines = [line for language, block in FENCE.findall(text) if language in SHELL for line in block.splitlines()]
    found = []
    for line in lines + (INLINE.findall(FENCE.sub("", text)) if inline else []):
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
    """The page's links and images whose file does not exist, or whose page has no heading of that anchor."""
    missing = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # a web or mail address
            continue
        path, _, name = target.partition("#")
        file = page.parent / path if path else page
        if not file.exists() or (name and file.suffix == ".md" and name not in anchors(file)):
            missing.append(target)
    return missing


def unknown_commands(page: Path, inline: bool = False) -> list[str]:
    """The page's `alexnet` commands (see `commands`) that name a subcommand or an option the command line does
    not have."""
    top, wrong = subcommands(_parser()), []
    for words in commands(page, inline):
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


def test_the_readme_stays_a_short_guide():
    assert len((ROOT / "README.md").read_text()) < README_LIMIT


def unknown_citations(source: str) -> list[str]:
    """The links into docs/ pages in a source file whose page or heading does not exist."""
    docs = ROOT / "docs"
    return [f"{page}#{name}" for page, name in CITATION.findall(source)
            if not (docs / page).exists() or name not in anchors(docs / page)]


def test_every_citation_in_the_code_points_at_a_heading():
    sources = [*sorted((ROOT / "alexnet").rglob("*.py")), *sorted((ROOT / "tests").glob("*.py")), ROOT / "hubconf.py"]
    assert [c for f in sources if f.name != Path(__file__).name for c in unknown_citations(f.read_text())] == []


def unknown_tests(page: Path) -> list[str]:
    """The tests a page names (tests/FILE.py::NAME) that do not exist."""
    return [f"{file}::{name}" for file, name in TEST.findall(page.read_text())
            if not (ROOT / "tests" / file).exists() or f"def {name}(" not in (ROOT / "tests" / file).read_text()]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_test_a_page_names_exists(page):
    assert unknown_tests(page) == []


def test_every_file_in_docs_is_linked_from_a_page():
    linked = {(page.parent / local(t)).resolve() for page in PAGES for t in links(page) if local(t)}
    assert [f.name for f in sorted((ROOT / "docs").iterdir()) if f.resolve() not in linked] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_commands_shown_exist(page):
    assert unknown_commands(page, inline=page.name == "README.md") == []


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
    page.write_text("## Here, §2\n![a](docs/x.png) [b](https://example.org) [c](#here-2) [e](docs/y.png#top)\n"
                    "[f](#there) [g](docs/z.md#a-heading) [h](docs/z.md#no-heading)\n```bash\n"
                    "alexnet train --data S --epochs 2  # a comment --nothing\n"
                    "torchrun --nproc_per_node 2 -m alexnet eval R --crops 10 && alexnet predict R a.jpg --fast\n"
                    "alexnet experiment lrn --data D --epoch 3\n.venv/bin/alexnet trian\n"
                    "```\n```python\nfrom alexnet import build_model\n```\n[d](`not a link`)\n"
                    "Run `alexnet eval CKPT --crop 10`, `torchrun -m alexnet train --minutes 5` or `alexnet()`.\n")
    (tmp_path / "docs" / "z.md").write_text("# A heading\n```\n# no heading\n```\n")
    assert links(page) == ["docs/x.png", "https://example.org", "#here-2", "docs/y.png#top", "#there",
                           "docs/z.md#a-heading", "docs/z.md#no-heading"]
    assert [local(t) for t in links(page)] == ["docs/x.png", None, None, "docs/y.png", None, "docs/z.md", "docs/z.md"]
    assert missing_targets(page) == ["docs/y.png#top", "#there", "docs/z.md#no-heading"]
    blocks = [["train", "--data", "S", "--epochs", "2"], ["eval", "R", "--crops", "10"], ["predict", "R", "a.jpg",
              "--fast"], ["experiment", "lrn", "--data", "D", "--epoch", "3"], ["trian"]]
    assert commands(page) == blocks
    assert commands(page, inline=True) == [*blocks, ["eval", "CKPT", "--crop", "10"], ["train", "--minutes", "5"]]
    wrong = ["predict R a.jpg --fast", "experiment lrn --data D --epoch 3", "trian"]
    assert unknown_commands(page) == wrong
    assert unknown_commands(page, inline=True) == [*wrong, "eval CKPT --crop 10"]
    assert unknown_citations("see docs/paper.md#lrn and docs/paper.md#no-such-heading") == ["paper.md#no-such-heading"]
    page.write_text("| held by tests/test_docs.py::test_every_test_a_page_names_exists |\n"
                    "| tests/test_docs.py::test_no_such_test, tests/test_nothing.py::test_x |\n")
    assert unknown_tests(page) == ["test_docs.py::test_no_such_test", "test_nothing.py::test_x"]
    (tmp_path / "pkg" / "csrc").mkdir(parents=True)
    for name in ("__init__.py", "a.py", "csrc/b.cpp", "csrc/c.cpp"):
        (tmp_path / "pkg" / name).write_text("")
    assert unlisted_modules("a.py  csrc/  b.cpp", tmp_path / "pkg") == ["csrc/c.cpp"]
