"""The code as a reader meets it: every § cited resolves to a section of docs/spec.md, no tracker numbers, the tour
names only what exists, no import cycles, the method never imports the application, files a reader takes in at one
sitting, lines of at most 120 columns."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "sampling", "specref", "weights")
SOURCES = sorted(p for d in (*PACKAGES, "scripts", "tests") for p in (ROOT / d).rglob("*.py"))
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "assets").rglob("*.md")])


def sections() -> set[str]:
    """The section numbers of docs/spec.md's headings ('4', '4.4', ...)."""
    text = (ROOT / "docs" / "spec.md").read_text()
    return {m.group(1) for m in re.finditer(r"^#{2,4} (\d+(?:\.\d+)*) ", text, re.M)}


def test_every_section_cited_exists():
    have = sections()
    assert {"1", "2.4", "3", "4.1", "4.2", "4.3", "4.4", "5", "6", "7", "8.3", "9.4", "11"} <= have
    missing = []
    for path in SOURCES + DOCS:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            # "§4.4", "§3-§4", "§2–§3": each number after a § sign
            for num in re.findall(r"§\s*(\d+(?:\.\d+)*)", line):
                if num.rstrip(".") not in have:
                    missing.append(f"{path.relative_to(ROOT)}:{n}: §{num}")
    assert missing == [], "\n".join(missing[:20])


def test_no_tracker_numbers_and_no_outside_spec():
    pattern = re.compile(r"(?i:\bissues? ?#?\d+|\bissue-\d+)|\bSPEC\.md\b|\bSPEC \u00a7")
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()[:80]}" for p in SOURCES + DOCS
             for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == [], "\n".join(found[:20])


def _defined(path: Path) -> set[str]:
    """Top-level functions and classes of a module, and Class.method names."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names |= {f"{node.name}.{f.name}" for f in node.body if isinstance(f, ast.FunctionDef)}
    return names


def test_the_tour_names_only_what_exists():
    text = (ROOT / "docs" / "method.md").read_text()
    refs = re.findall(r"`((?:[\w]+/)+[\w]+\.py): ([\w.]+)`", text)
    assert len(refs) >= 10, refs
    bad = [f"{f}: {name}" for f, name in refs if not (ROOT / f).is_file() or name not in _defined(ROOT / f)]
    assert bad == [], bad


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (outside `if TYPE_CHECKING:` blocks)."""
    modules = {_module(p): p for d in PACKAGES for p in (ROOT / d).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        checks = [node for node in ast.walk(tree)
                  if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)]
        skip = {id(n) for node in checks for n in ast.walk(node)}
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        out = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            out |= {t for t in targets if t in modules and t != name}
        graph[name] = out
    return graph


def test_no_import_cycles():
    graph = imports()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt in ("specref",) or nxt.endswith(".__init__"):
                continue  # the package's public API re-exports; a module importing a sibling goes to the sibling
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert cycles == [], cycles


def test_the_method_never_imports_the_application():
    graph = imports()
    method = [m for m in graph if m.startswith("specref.") and not m.startswith("specref.app")
              and m != "specref.__main__"]
    bad = {m: sorted(t for t in graph[m] if t.startswith("specref.app")) for m in method}
    assert {m: t for m, t in bad.items() if t} == {}


@pytest.mark.parametrize("folder,limit", [("specref", 300), ("specref/app", 300)])
def test_files_a_reader_takes_in_at_one_sitting(folder, limit):
    big = {p.name: n for p in (ROOT / folder).glob("*.py") if (n := len(p.read_text().splitlines())) > limit}
    assert big == {}
    assert len((ROOT / "specref" / "app" / "cli.py").read_text().splitlines()) <= 200


def test_lines_fit_in_120_columns():
    long = [f"{p.relative_to(ROOT)}:{n}" for p in SOURCES for n, line in enumerate(p.read_text().splitlines(), 1)
            if len(line) > 120]
    assert long == [], long[:20]
