"""The packages' imports point down: components meet only through the stores and the core package.

Drawn from every import statement (those inside functions included) of every package:

- the core package (`shopstream`) imports no other package of ours;
- a component (`components/*/shopstream_*`, the notebooks and the DAGs) imports only the core
  package, never another component nor the stack; the DAG files are the batch's entry for
  Airflow, so they import the batch too;
- the stack (`shopstream_stack`) imports only the core package: it runs the components as
  processes (`python -m ...`, `uvicorn --factory ...`), it does not import them;
- `tasks.py` imports the core package, the stack, the benchmarks and the components' CLIs;
- the benchmarks and the tests may import anything, and nothing imports them but `tasks.py`;
- and there is no loop.
"""

from __future__ import annotations

import ast
import json
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORE, STACK, BENCH, DAGS, TASKS = "shopstream", "shopstream_stack", "shopstream_bench", "dags", "tasks.py"


def packages() -> dict[str, list[Path]]:
    """Each package of ours and its source files (the notebooks' code cells count as theirs)."""
    found = {
        CORE: [REPO / "components" / "core" / CORE],
        STACK: [REPO / "infra" / "stack" / STACK],
        BENCH: [REPO / "benchmarks" / BENCH],
        DAGS: [REPO / "components" / "dags"],
        TASKS: [REPO / TASKS],
    }
    for folder in sorted((REPO / "components").glob("*/shopstream_*")):
        found[folder.name] = [folder] + ([folder.parent] if folder.parent.name == "notebooks" else [])
    files: dict[str, list[Path]] = {}
    for name, roots in found.items():
        files[name] = sorted(
            {f for root in roots for f in ([root] if root.is_file() else [*root.rglob("*.py"), *root.glob("*.ipynb")])}
        )
    return files


COMPONENTS = {name for name in packages() if name not in (CORE, STACK, BENCH, DAGS, TASKS)}
OURS = {CORE, STACK, BENCH, *COMPONENTS}


def source(path: Path) -> str:
    if path.suffix != ".ipynb":
        return path.read_text()
    cells = json.loads(path.read_text())["cells"]
    lines = [line for c in cells if c["cell_type"] == "code" for line in "".join(c["source"]).splitlines()]
    return "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))


def imported(text: str) -> list[tuple[int, str]]:
    """(line, module) of every absolute import, and of `importlib.import_module("...")` calls."""
    out = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
        ):
            out.append((node.lineno, node.args[0].value))
    return out


def edges() -> dict[tuple[str, str], list[str]]:
    """(importer, imported package) -> where: every arrow between two of our packages."""
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name, files in packages().items():
        for f in files:
            for line, module in imported(source(f)):
                top = module.split(".")[0]
                if top in OURS and top != name:
                    found[(name, top)].append(f"{f.relative_to(REPO)}:{line} imports {module}")
    return found


def allowed(importer: str, module: str) -> bool:
    top = module.split(".")[0]
    if importer == BENCH:
        return True
    if top == BENCH:
        return importer == TASKS
    if top == CORE:
        return True  # everything may use the core package; the core package itself is checked below
    if importer in (CORE, STACK):
        return False
    if importer == DAGS:
        return top == "shopstream_batch"
    if importer == TASKS:
        return top == STACK or (top in COMPONENTS and module.split(".")[-1] == "cli")
    return False  # a component: the core package only


def test_every_arrow_between_packages_points_down():
    wrong = [
        where
        for (importer, _), places in sorted(edges().items())
        for where in places
        if not allowed(importer, where.rsplit(" ", 1)[1])
    ]
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_the_package_graph_has_no_loop():
    graph: dict[str, set[str]] = defaultdict(set)
    for importer, imported_pkg in edges():
        graph[importer].add(imported_pkg)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (loop := visit(nxt, [*path, node])):
                return loop
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            loop = visit(start, [])
            assert loop is None, "a loop: " + " -> ".join(loop[loop.index(loop[-1]) :])


def test_the_check_sees_the_imports_it_rules_on():
    """The rules are only as good as the scan: it finds the arrows we know of, inside functions
    too, and would flag the ones that used to break the layers."""
    found = edges()
    assert ("shopstream_batch", CORE) in found and (STACK, CORE) in found and (DAGS, "shopstream_batch") in found
    assert (TASKS, STACK) in found and ("shopstream_analysis", CORE) in found  # a notebook's code cell
    assert imported("def f():\n    from shopstream_stack.install import spark_jar_paths\n") == [
        (2, "shopstream_stack.install")
    ]
    for importer, module in [
        ("shopstream_streaming", "shopstream_stack.install"),
        (STACK, "shopstream_streaming"),
        (STACK, "shopstream_batch.check"),
        ("shopstream_dashboard", "shopstream_analysis"),
        ("shopstream_audit", "shopstream_batch.store"),
        (CORE, "shopstream_streaming"),
        (TASKS, "shopstream_batch.check"),
        (DAGS, "shopstream_streaming"),
    ]:
        assert not allowed(importer, module), (importer, module)


@pytest.mark.parametrize("name", sorted(OURS - {BENCH}))
def test_nothing_of_ours_imports_the_tests(name):
    wrong = [
        f"{f.relative_to(REPO)}:{line}"
        for f in packages()[name]
        for line, module in imported(source(f))
        if module.split(".")[0] in ("conftest", "tests") or module.startswith("test_")
    ]
    assert not wrong, wrong
