"""The documentation's relative links lead somewhere: every file exists, every #anchor is a heading there."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from .servers import ROOT

DOCS = sorted({ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "clients" / "README.md",
               ROOT / "deploy" / "README.md", ROOT / "research" / "README.md", *(ROOT / "docs").rglob("*.md"),
               *(ROOT / "clients").glob("*/README.md"), *(ROOT / "deploy" / "helm").glob("*/README.md")})

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def prose(path: Path) -> str:
    """The file's text without code blocks and code spans, where a `[x](y)` is no link."""
    return CODE_SPAN.sub("", FENCE.sub("", path.read_text()))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text())):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(path)) if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.I)]


def test_the_checked_files_exist():
    assert ROOT / "README.md" in DOCS and (ROOT / "docs" / "README.md") in DOCS
    assert all(p.is_file() for p in DOCS)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_and_headings(doc):
    broken = []
    for target in relative_links(doc):
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_checker_sees_links_anchors_and_skips_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Where to read more\n## The `make` targets\n## Notes\n## Notes\n"
                    "[a](other.md#the-make-targets) ![img](pic.png) [web](https://example.com)\n"
                    "`[not](a-link.md)`\n```\n[nor](this.md)\n# not a heading\n```\n")
    assert relative_links(page) == ["other.md#the-make-targets", "pic.png"]
    assert anchors(page) == {"where-to-read-more", "the-make-targets", "notes", "notes-1"}


def test_every_config_the_readme_runs_exists():
    configs = re.findall(r"make run CONFIG=(\S+)", (ROOT / "README.md").read_text())
    assert configs, "the README shows `make run CONFIG=...`"
    assert [c for c in configs if not (ROOT / c).is_file()] == []


def named_files(text: str) -> list[str]:
    """Files a help text names (output directories such as bench/results/ appear only once a target ran)."""
    return re.findall(r"(?<![\w./-])((?:docs|clients|deploy|examples)/[\w/-]*\.\w+)", text)


def test_the_help_texts_name_files_that_exist(capsys):
    from tierwise_tools.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    cli_help = capsys.readouterr().out
    make_help = subprocess.run(["make", "-s", "-C", str(ROOT), "help"], capture_output=True, text=True,
                               check=True, timeout=30).stdout
    assert "make run" in make_help and "docs/" in cli_help
    named = named_files(cli_help) + named_files(make_help)
    assert [p for p in named if not (ROOT / p).exists()] == []
