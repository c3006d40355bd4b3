"""The docs list what the tests check: each bad-input message in docs/bad-input.md is one a test asserts; every
relative link in the README and docs/ leads to a file of the repository (and to a heading there, when it names one)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)


def test_every_documented_bad_input_is_tested():
    rows = [line.split(" | ") for line in (ROOT / "docs" / "bad-input.md").read_text().splitlines()
            if line.startswith("| ") and "`" in line]
    assert len(rows) >= 15
    for row in rows:
        message, test_file = re.search(r"`(.+)`", row[2])[1], row[3].strip(" |")
        source = (ROOT / test_file).read_text()
        assert message in source or re.search(message, source), f"{message!r} is asserted in {test_file}"


def prose(page: Path) -> str:
    """The page without its fenced code blocks, whose brackets are command syntax, not links."""
    return re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)


def anchors(page: Path) -> set[str]:
    """GitHub's anchor for each heading: lower case, punctuation dropped, spaces as hyphens."""
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.+)$", prose(page), re.M)}


def test_every_relative_link_in_the_readme_and_docs_leads_to_a_file_of_the_repository():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    targets = [(page, target) for page in pages for target in LINK.findall(prose(page))
               if not re.match(r"[a-z]+:", target)]  # https:, mailto: lead outside
    assert len(targets) >= 20
    broken = []
    for page, target in targets:
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not (linked.is_relative_to(ROOT) and linked.exists()) or (
                anchor and linked.suffix == ".md" and anchor not in anchors(linked)):
            broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, f"links to nothing in the repository: {broken}"
