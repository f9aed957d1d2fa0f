"""Comments and docs explain themselves: no file cites the planning documents the project
started from (README, "Background") by section, pitfall or step number, since a reader of
this repository cannot look those up. Say what and why instead, with the upstream reference
(a URL, a man page) where one exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
THIS = Path(__file__).resolve()

# Not the project's files: build output, caches, virtual environments (see .gitignore).
SKIPPED_DIRS = {
    ".git",
    "build",
    "__pycache__",
    ".nox",
    ".venv",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
}

# Each pattern is one way a planning document has been cited. "seed" alone stays allowed: the
# cloud-init NoCloud seed (user-data, meta-data, seed.iso) is a real, upstream term.
CITATIONS: dict[str, re.Pattern[str]] = {
    "a plan section (plan NN-NN)": re.compile(r"\bplans? \d{2}-\d{2}\b", re.IGNORECASE),
    "a numbered pitfall": re.compile(r"\bpitfalls? \d+\b", re.IGNORECASE),
    # Capital "Step N" is the planning documents' heading style; the appliance's own boot
    # steps are written "step N" or "[step N/M]" and stay allowed.
    "a planning step (Step N)": re.compile(r"\bStep \d+\b(?!/)"),
    "the seed documents": re.compile(
        r"\bthe seeds\b|\bseeds'|\bseeds,? (?:layers?|pitfall|pattern)\b|\bSeeds\b"
        r"|\bseed (?:scripts?|specification|spec|docs?|documents?|\d{3})\b"
        r"|\(seeds\)|\(seed\) (?:scripts?|spec)|\bseed's\b",
    ),
}


def citations(text: str) -> list[tuple[int, str, str]]:
    """(line number, kind, matched text) of every planning-document citation in `text`."""
    found: list[tuple[int, str, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        for kind, pattern in CITATIONS.items():
            found += [(number, kind, match.group(0)) for match in pattern.finditer(line)]
    return found


def project_files() -> list[Path]:
    files: list[Path] = []
    for path in sorted(REPO.rglob("*")):
        parts = path.relative_to(REPO).parts
        if any(part in SKIPPED_DIRS or part.endswith(".egg-info") for part in parts[:-1]):
            continue
        if path.is_file() and path.resolve() != THIS:
            files.append(path)
    return files


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ('"""GPU detection (plan 06-02)."""', "a plan section (plan NN-NN)"),
        ("# see Plan 06-01", "a plan section (plan NN-NN)"),
        ("memory growth (pitfall 4)", "a numbered pitfall"),
        ('"Step 9: GPU Detection"', "a planning step (Step N)"),
        ("GPU detection follows the seeds:", "the seed documents"),
        ("# seeds, layer 2: UEFI", "the seed documents"),
        ("# Seeds, layer 2: UEFI", "the seed documents"),
        ("the seeds' two checks", "the seed documents"),
        ("Unlike the seed script we", "the seed documents"),
        ("definitions (seed 002)", "the seed documents"),
        ("as the seed specification spells it", "the seed documents"),
        ("which fooled the seed's grep", "the seed documents"),
        ("0666 (seeds) would", "the seed documents"),
    ],
)
def test_a_citation_is_found(text: str, kind: str) -> None:
    assert [found_kind for _, found_kind, _ in citations(text)] == [kind]


@pytest.mark.parametrize(
    "text",
    [
        "render Packer HCL + cloud-init seeds into build/<image>/",
        "`cloud-init schema` on the seed",
        "cloud-init clean --logs --seed",
        "seed_dir = out_dir / 'seed'",
        "rng = np.random.default_rng([seed, partition_id])",
        "[step 5/7] gpu-detection: warning FL_GPU_AVAILABLE=NO",
        "**GPU detection (step 5).** With FL_GPU_ENABLED=NO the step is skipped",
        "an execution plan for the build",
    ],
)
def test_project_words_are_not_citations(text: str) -> None:
    assert citations(text) == []


def test_no_project_file_cites_a_planning_document() -> None:
    offenders: list[str] = []
    scanned = 0
    for path in project_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # binary files (none tracked today) carry no comments
            continue
        scanned += 1
        rel = path.relative_to(REPO)
        offenders += [f"{rel}:{line}: {kind}: {match!r}" for line, kind, match in citations(text)]
    assert scanned > 100, f"only {scanned} files scanned from {REPO}: is this the repository?"
    assert not offenders, (
        "these lines cite a planning document a reader cannot look up; say what and why in the "
        "comment's own words, with the upstream reference where one exists:\n  " + "\n  ".join(offenders)
    )
