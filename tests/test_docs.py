"""The README and the guide in docs/ hold no dead relative link or anchor, and every `medprobe ...` command in them parses."""

import re
import shlex
from pathlib import Path

import pytest

from medprobe.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def prose(text):
    """The page without its fenced code blocks and inline code, where brackets are code, not links."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def anchors(path):
    """GitHub's heading anchors: lower case, punctuation but '-' and '_' dropped, spaces to '-', repeats numbered."""
    seen, found = {}, set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", FENCE.sub("", path.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


def links(page):
    return [target for target in LINK.findall(prose(page.read_text())) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    dead = []
    for target in links(page):
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            dead.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            dead.append(f"{target}: no heading with that anchor in {path.relative_to(ROOT)}")
    assert not dead, f"{page.relative_to(ROOT)}: " + "; ".join(dead)


def commands(page):
    """Every `medprobe ...` line of the page's bash blocks, continuation lines joined and shell variables set in the block
    substituted (`make ...` lines are not medprobe commands)."""
    found = []
    for language, block in re.findall(r"^```(\w*)\n(.*?)^```", page.read_text(), re.M | re.S):
        if language not in ("bash", "sh", "console", ""):
            continue
        variables = {}
        for line in block.replace("\\\n", " ").splitlines():
            line = line.removeprefix("$ ")  # a shell prompt before a command whose output follows
            if re.fullmatch(r"[A-Za-z_]\w*=\S.*", line):
                name, value = shlex.split(line, comments=True)[0].split("=", 1)
                variables[name] = value
            elif line.split()[:1] and Path(line.split()[0]).name == "medprobe":  # not output lines, not `make ...`
                line = re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), m.group(0)), line)
                found.append(shlex.split(line, comments=True)[1:])
    return found


def test_the_readme_shows_commands_to_check():
    assert len(commands(ROOT / "README.md")) >= 4


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_medprobe_command_parses(page, capsys):
    parser = build_parser()
    for args in commands(page):
        try:
            parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"{page.relative_to(ROOT)}: `medprobe {shlex.join(args)}` does not parse: {capsys.readouterr().err.strip()}")


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 250
    for lab_notebook in ("sixth round", "issue 14", "fifth round"):
        assert lab_notebook not in text


def test_the_guide_lists_every_runtime():
    from medprobe.encoders.runtimes import RUNTIMES

    page = (ROOT / "docs" / "runtimes.md").read_text()
    assert [r for r in RUNTIMES if f"| `{r}`" not in page] == []


def test_the_python_guide_repeats_the_readme_quick_start_exactly():
    def quick_start(path):
        return re.search(r"^```python\n(from medprobe import .*?)^```", path.read_text(), re.M | re.S).group(1)

    assert quick_start(ROOT / "docs" / "python.md") == quick_start(ROOT / "README.md")
