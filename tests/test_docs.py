"""README.md and docs/*.md link to each other: every relative link must reach a file that exists,
and a `#heading` in it must be one of that file's headings (as GitHub names their anchors)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but '-' and '_' dropped, spaces
    as '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a page; a repeated one gets '-1', '-2', ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#+ (.+)$", FENCE.sub("", path.read_text(encoding="utf-8")),
                              re.MULTILINE):
        name = slug(heading)
        seen[name] = seen.get(name, -1) + 1
        found.add(name if seen[name] == 0 else f"{name}-{seen[name]}")
    return found


def relative_links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return [link for link in LINK.findall(text) if not re.match(r"[a-z]+:", link)]


def test_anchors_follow_githubs_rule():
    assert slug("`tinyllm runs`: recipes over seeds") == "tinyllm-runs-recipes-over-seeds"
    assert slug("On an H100, 1.5 minutes") == "on-an-h100-15-minutes"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(doc):
    broken = []
    for link in relative_links(doc):
        target, _, anchor = link.partition("#")
        page = (doc.parent / target).resolve() if target else doc
        if not page.exists() or (anchor and anchor not in anchors(page)):
            broken.append(link)
    assert not broken, f"{doc.relative_to(ROOT)}: broken links {broken}"


def test_the_readme_links_every_doc():
    linked = {(ROOT / link.partition("#")[0]).resolve() for link in relative_links(DOCS[0])}
    assert {doc.resolve() for doc in DOCS[1:]} - linked == set()
