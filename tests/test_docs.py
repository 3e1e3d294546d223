"""README.md and docs/ (issue 18): a short README whose docs map names every page, and relative
links (and their #anchors) that lead somewhere. The pages' commands run in tests/test_readme.py."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_BYTES = 15_000
DOCS_MAP = "Documentation"  # README's section that maps docs/, one row per page


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def tokens(path: Path) -> list:
    return MarkdownIt().parse(path.read_text())


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def heading_text(inline) -> str:
    return "".join(c.content for c in inline.children if c.type in ("text", "code_inline"))


def anchors(path: Path) -> set[str]:
    """The #anchors of a page's headings (a repeated heading gets -1, -2, … as on GitHub)."""
    out, seen, toks = set(), {}, tokens(path)
    for i, token in enumerate(toks):
        if token.type == "heading_open":
            base = slug(heading_text(toks[i + 1]))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path, section: str | None = None) -> list[tuple[int, str]]:
    """(line, target) of every link and image on the page, or in its `## section` only."""
    out, inside, toks, lines = [], section is None, tokens(path), path.read_text().splitlines()
    for i, token in enumerate(toks):
        if section is not None and token.type == "heading_open" and token.tag == "h2":
            inside = heading_text(toks[i + 1]) == section
        if not inside or token.type != "inline" or not token.map:
            continue
        for child in token.children or []:
            target = child.attrs.get("href") if child.type == "link_open" else child.attrs.get("src")
            if child.type in ("link_open", "image") and target:
                first, end = token.map  # the block's lines: the link's own is the first that holds it
                line = next((n for n in range(first, end) if f"]({target}" in lines[n]), first)
                out.append((line + 1, target))
    return out


def is_relative(target: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) is None  # no http:, mailto:, …


def test_readme_is_short_and_starts_with_the_quickstart():
    assert README.stat().st_size <= README_MAX_BYTES, (
        f"README.md is {README.stat().st_size:,} bytes, over {README_MAX_BYTES:,}: move reference text to docs/"
    )
    toks = tokens(README)
    h2 = [heading_text(toks[i + 1]) for i, t in enumerate(toks) if t.type == "heading_open" and t.tag == "h2"]
    assert h2[0] == "Quickstart" and DOCS_MAP in h2


def test_the_docs_map_links_every_docs_page():
    mapped = {
        (README.parent / unquote(target.split("#")[0])).resolve()
        for _, target in links(README, DOCS_MAP)
        if is_relative(target)
    }
    missing = [p.relative_to(ROOT).as_posix() for p in pages()[1:] if p.resolve() not in mapped]
    assert pages()[1:] and not missing, f"README.md's '{DOCS_MAP}' section does not link {missing}"


def test_every_relative_link_leads_to_a_file_and_anchor_that_exist():
    broken = []
    for page in pages():
        for line, target in links(page):
            if not is_relative(target):
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / unquote(file)).resolve() if file else page
            where = f"{page.relative_to(ROOT).as_posix()}:{line}: ({target})"
            if not dest.exists():
                broken.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and unquote(anchor) not in anchors(dest):
                broken.append(f"{where}: no heading with that anchor in {dest.name}")
    assert not broken, "\n".join(broken)


def test_anchors_are_githubs():
    assert slug("Speed: bench.py and data.cache") == "speed-benchpy-and-datacache"
    assert slug("Evaluate, predict, export") == "evaluate-predict-export"
    assert slug("Multi-GPU") == "multi-gpu"
    assert "gpu-memory-tiers" in anchors(DOCS / "recipes.md")
