"""The import layering docs/design.md states (its Architecture table) is the code's: every
project import of a unit is allowed by the unit's row, and no import cycle exists, imports
inside functions included (they once hid `data.datasets` <-> `data.streams`). And its rule
for where imports sit, in the package and in the tests, tools and benchmarks alike: at module
top, but for the ones deferred into a function on purpose, each marked
``# deferred: <reason>``. And README.md's Architecture section lists every unit of the
package, and nothing else."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tool_runs import REPO

PACKAGE = REPO / "ubnas_tf"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere (top level or in a function)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] == "ubnas_tf":
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.append(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                targets += [a.name for a in node.names if a.name.split(".")[0] == "ubnas_tf"]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def documented_layers() -> dict[str, set[str]]:
    text = (REPO / "docs" / "design.md").read_text()
    block = re.search(r"<!-- layering: begin -->(.*?)<!-- layering: end -->", text, re.S)
    assert block, "docs/design.md has no layering table"
    allowed = {}
    for line in block.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`"):
            continue
        imports = set(re.findall(r"`(\w+)`", cells[1]))
        for unit in re.findall(r"`(\w+)`", cells[0]):
            allowed[unit] = imports
    return allowed


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_the_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_import_is_allowed_by_the_documented_layering():
    allowed = documented_layers()
    graph = import_graph()
    units = {_unit(m) for m in graph}
    assert units <= set(allowed), f"units missing from docs/design.md: {units - set(allowed)}"
    wrong = sorted(f"{m} imports {t}" for m, targets in graph.items() for t in targets
                   if _unit(t) != _unit(m) and _unit(t) not in allowed[_unit(m)])
    assert not wrong, "not in docs/design.md's layering table: " + "; ".join(wrong)


def test_the_layering_table_names_only_real_units():
    units = {_unit(m) for m in import_graph()}
    allowed = documented_layers()
    named = set(allowed) | set().union(*allowed.values()) - {"nothing"}
    assert named <= units, named - units


_DEFERRED = re.compile(r"#\s*deferred:\s*\S")


def undeferred_imports(source: str) -> list[tuple[int, str]]:
    """(line, text) of each import inside a function of `source` that is not marked
    ``# deferred: <reason>`` on one of its lines or on the line before it."""
    lines = source.splitlines()
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, (ast.Import, ast.ImportFrom)):
                marked = lines[max(child.lineno - 2, 0):child.end_lineno]
                if not any(_DEFERRED.search(line) for line in marked):
                    found.append((child.lineno, lines[child.lineno - 1].strip()))
            visit(child, in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(source), False)
    return found


# Each Python file of the repository: the package, and the scripts and tests around it.
def _python_files() -> list[Path]:
    around = [p for d in ("tests", "tools", "benchmarks") for p in (REPO / d).glob("*.py")]
    return sorted([*PACKAGE.rglob("*.py"), *around, *REPO.glob("*.py")])


def test_imports_sit_at_module_top_unless_deferred_on_purpose():
    """docs/design.md's Architecture: "Imports: ..." (the project's modules and the packages
    that `import ubnas_tf` loads anyway are imported at the top; only a heavy import that
    --help would otherwise pay for sits in the function that needs it, marked; in the tests
    likewise, an optional package behind its skip or TensorFlow in a module that otherwise
    loads none)."""
    files = _python_files()
    assert PACKAGE / "flags.py" in files and REPO / "tests" / "conftest.py" in files
    wrong = [f"{path.relative_to(REPO)}:{line}: {text}"
             for path in files for line, text in undeferred_imports(path.read_text())]
    assert not wrong, ("imports inside functions without '# deferred: <reason>' (move them to "
                       "the module's top, or mark why not):\n" + "\n".join(wrong))


def test_the_deferral_finder_finds_one():
    source = (
        "import os\n"
        "def f():\n"
        "    import json\n"
        "    # deferred: slow\n"
        "    import scipy.stats\n"
        "    from ubnas_tf import (  # deferred: a reason\n"
        "        io_utils,\n"
        "    )\n"
        "    def g():\n"
        "        from ubnas_tf.genotype import Genotype\n"
        "    return lambda: __import__('x')\n"
    )
    assert undeferred_imports(source) == [
        (3, "import json"), (10, "from ubnas_tf.genotype import Genotype")]


def readme_units() -> set[str]:
    """The package units README.md's Architecture section lists (``ubnas_tf/NAME.py``,
    ``ubnas_tf/NAME/`` and the bare ``NAME.py`` continuing such a line)."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Architecture\n", 1)[1].split("\n## ", 1)[0]
    units: set[str] = set()
    for line in section.splitlines():
        listed = line.strip().split("  ")[0]  # the path column, not the description
        if line.startswith("    ubnas_tf/") or (units and re.fullmatch(r"    \w+\.py\b.*", line)):
            units |= set(re.findall(r"(\w+)(?:\.py\b|/)", listed)) - {"ubnas_tf"}
    return units


def test_the_readme_architecture_lists_every_unit_of_the_package():
    real = {p.stem for p in PACKAGE.glob("*.py")} | {p.parent.name
                                                     for p in PACKAGE.glob("*/__init__.py")}
    assert readme_units() == real - {"__init__"}
