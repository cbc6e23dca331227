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


def documented_layout() -> set[str]:
    """The modules docs/architecture.md's tinyllm/ tree names, as paths under tinyllm/: a line
    `  part/  a.py b.py` names part/a.py and part/b.py, and deeper lines go on with that part."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    tree = re.search(r"^```\ntinyllm/\n(.*?)^```", text, re.MULTILINE | re.DOTALL).group(1)
    named, part = set(), ""
    for line in tree.splitlines():
        words = line.split()
        if words and words[0].endswith("/"):
            part, words = words[0], words[1:]
        elif line.startswith("  ") and not line.startswith("    "):
            part = ""
        named |= {part + word for word in words if word.endswith(".py")}
    return named


def test_the_architecture_page_names_every_module_and_only_those():
    """A module added, moved or removed shows in the layout a newcomer reads first."""
    package = ROOT / "tinyllm"
    modules = {str(p.relative_to(package)) for p in package.rglob("*.py")
               if p.name != "__init__.py"}
    named = documented_layout()
    assert len(named) > 30
    assert not sorted(modules - named), f"docs/architecture.md omits {sorted(modules - named)}"
    assert not sorted(named - modules), f"docs/architecture.md names {sorted(named - modules)}"


def test_the_budget_page_states_the_data_limited_stop_as_the_code_sets_it():
    """docs/training-budget.md spells the stop's constants out in words: they must be the code's."""
    from tinyllm.training.plan import DECAY_EVALS_PER_INTERVAL
    from tinyllm.training.state import FINAL_DECAY, STALL_EVALS

    words = {2: "two", 3: "three", 4: "four"}
    shares = {0.2: "a fifth", 0.25: "a quarter", 0.5: "half"}
    text = " ".join((ROOT / "docs" / "training-budget.md").read_text(encoding="utf-8").split())
    assert f"when {words[STALL_EVALS]} evaluations in a row find" in text
    assert f"over {shares[FINAL_DECAY]} of the steps so far" in text
    assert f"evaluated {words[DECAY_EVALS_PER_INTERVAL]} times as often" in text
    assert f"{words[STALL_EVALS]} evaluations in a row no better end the run" in text


def test_the_budget_page_lists_every_stopped_by_value_and_only_those():
    """docs/training-budget.md's "When the run stops" names each StoppedBy value once, in a bullet
    of its own: a reason added to the code (or dropped from it) shows on the page."""
    from tinyllm.training.loop import StoppedBy

    text = (ROOT / "docs" / "training-budget.md").read_text(encoding="utf-8")
    section = text.split("## When the run stops", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^- \*\*.+?\*\* \(`(\w+)`\)", section, re.MULTILINE)
    assert sorted(listed) == sorted(reason.value for reason in StoppedBy)


def test_the_readme_names_the_one_sampling_default_evaluate_changes():
    from dataclasses import fields

    from tinyllm.config import EvaluateConfig, SamplingConfig

    evaluate, default = EvaluateConfig(), SamplingConfig()
    differ = [f.name for f in fields(SamplingConfig)
              if getattr(evaluate, f.name) != getattr(default, f.name)]
    assert differ == ["top_p"]
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert f"`evaluate.top_p` is {evaluate.top_p}," in readme
    assert f"else `top_p` defaults to {default.top_p} (off)" in readme
