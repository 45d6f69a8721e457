"""The project's import graph, read from the source (AST), and the floors it must respect.

Every `import` counts, wherever it stands: at module level, inside a function (the lazy imports that keep stage
start-up light are still real dependencies) and under `try`. `if TYPE_CHECKING:` blocks never run, so they are
left out of what a stage executes (its DVC code deps) but kept for the floors: a type that points upwards is a
dependency upwards all the same. Imports of the package itself (`pipelines.x.y`) also run `pipelines/__init__.py` and
`pipelines/x/__init__.py`, so those count too.

Floors, bottom to top; a module may import from its own floor or below, never above:

0. contracts: `config`, `errors`, `io`, `schema`, `reports` (and the `pipelines` package itself)
1. engines: `engines/` (Spark, Ray), `storage/` (S3)
2. domain packages: `data`, `validation`, `embeddings`, `training`, `models`, `serving`, `versioning`,
   `orchestration`, `monitoring`, `infra` (deployment manifests checked offline), `maturity` (the LLMOps maturity
   scorecard), `evaluation` (task families, Ray evaluation runner, bootstrap), `cost` (price table, stage resource
   meter, cost summaries) (acyclic between each other)
3. `stages/`: wiring of domain code, one module per stage; a stage never imports another stage
4. entry points: `cli`, `summary`, `platform_api` (the platform's data as one facade, as the CLI sees it) and
   `mcp_server` (its MCP wiring)
5. Airflow: `dags/`, `plugins/`
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

PACKAGE = "pipelines"
# Top-level folders scanned besides the package: Airflow's DAG and plugin folders (on Airflow's sys.path, so a
# plugin module is imported by its bare name).
AIRFLOW_FOLDERS = ("dags", "plugins")

FLOORS: dict[int, tuple[str, ...]] = {
    0: ("pipelines", "pipelines.config", "pipelines.errors", "pipelines.io", "pipelines.schema", "pipelines.reports"),
    1: ("pipelines.engines", "pipelines.storage"),
    2: ("pipelines.data", "pipelines.validation", "pipelines.embeddings", "pipelines.training", "pipelines.models",
        "pipelines.serving", "pipelines.versioning", "pipelines.orchestration", "pipelines.monitoring",
        "pipelines.infra", "pipelines.maturity", "pipelines.security",
        "pipelines.evaluation", "pipelines.cost", "pipelines.rollout", "pipelines.flywheel"),
    3: ("pipelines.stages",),
    4: ("pipelines.cli", "pipelines.summary", "pipelines.monitor", "pipelines.platform_api", "pipelines.mcp_server"),
}
AIRFLOW_FLOOR = 5
FLOOR_NAMES = {0: "contracts", 1: "engines", 2: "domain", 3: "stages", 4: "entry points", 5: "airflow"}
STAGES_PACKAGE = "pipelines.stages"


@dataclass(frozen=True)
class Module:
    name: str  # dotted: pipelines.data.text, dags.llmops_lifecycle, llmops_airflow
    path: Path  # relative to the repository root
    is_package: bool


def discover(root: str | Path) -> dict[str, Module]:
    """Every Python module of the package and of the Airflow folders, by dotted name."""
    root = Path(root)
    found: dict[str, Module] = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        rel = path.relative_to(root)
        parts = list(rel.with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        found[".".join(parts)] = Module(".".join(parts), rel, is_package)
    for folder in AIRFLOW_FOLDERS:
        base = root / folder
        for path in sorted(base.rglob("*.py")) if base.is_dir() else []:
            rel = path.relative_to(root)
            inner = list(path.relative_to(base).with_suffix("").parts)
            is_package = inner[-1] == "__init__"
            if is_package:
                inner = inner[:-1]
            # dags/x.py is the file Airflow parses; plugins/pkg/... is imported as `pkg...`
            name = ".".join([folder, *inner]) if folder == "dags" else ".".join(inner)
            found[name] = Module(name, rel, is_package)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST, type_checking: bool) -> Iterable[ast.Import | ast.ImportFrom]:
    stack = [tree]
    while stack:
        node = stack.pop()
        if not type_checking and isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the `else` of `if TYPE_CHECKING` does run
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _with_parents(name: str, modules: dict[str, Module]) -> set[str]:
    """`name` and every package above it that is a project module (importing a.b.c runs a and a.b first)."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in modules}


def _resolve(node: ast.Import | ast.ImportFrom, module: Module, modules: dict[str, Module]) -> set[str]:
    targets: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            targets |= _with_parents(alias.name, modules)
        return targets
    base = node.module or ""
    if node.level:  # relative: from the module's own package upwards
        package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    targets |= _with_parents(base, modules)
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in modules:  # `from pkg import module` imports the module
            targets |= _with_parents(sub, modules)
    return targets


def module_imports(module: Module, root: str | Path, modules: dict[str, Module], type_checking: bool = True) -> set[str]:
    """The project modules `module` imports directly, anywhere in its body (TYPE_CHECKING blocks only when
    `type_checking`)."""
    tree = ast.parse((Path(root) / module.path).read_text(encoding="utf-8"), filename=str(module.path))
    found: set[str] = set()
    for node in _import_nodes(tree, type_checking):
        found |= _resolve(node, module, modules)
    found.discard(module.name)
    return found


def import_graph(root: str | Path, type_checking: bool = True) -> tuple[dict[str, Module], dict[str, set[str]]]:
    """(modules, module -> the project modules it imports directly). `type_checking=False`: only what runs."""
    modules = discover(root)
    return modules, {name: module_imports(m, root, modules, type_checking) for name, m in modules.items()}


def closure(start: str, graph: dict[str, set[str]]) -> set[str]:
    """`start` and everything it imports, directly or not."""
    seen, todo = {start}, [start]
    while todo:
        for dep in graph.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def floor_of(name: str) -> int:
    """The floor of a module: that of the longest listed prefix; Airflow folders are on top."""
    best, floor = -1, AIRFLOW_FLOOR
    for level, prefixes in FLOORS.items():
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, floor = len(prefix), level
    if best < 0 and name.split(".")[0] == PACKAGE:
        raise ValueError(f"{name} is on no floor: add its package to FLOORS in {__name__}")
    return floor


def unit_of(name: str) -> str:
    """What cycles are checked between: a domain package as a whole (pipelines.data), else the module itself."""
    parts = name.split(".")
    if floor_of(name) == 2 and len(parts) >= 2:
        return ".".join(parts[:2])
    return name


@dataclass(frozen=True)
class Violation:
    importer: str
    imported: str
    why: str

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported}: {self.why}"


def floor_violations(graph: dict[str, set[str]]) -> list[Violation]:
    """Imports that point upwards, and stage modules importing other stage modules."""
    bad = []
    for importer, deps in sorted(graph.items()):
        for dep in sorted(deps):
            f_from, f_to = floor_of(importer), floor_of(dep)
            if f_to > f_from:
                bad.append(Violation(importer, dep, f"floor {f_from} ({FLOOR_NAMES[f_from]}) imports from floor "
                                                    f"{f_to} ({FLOOR_NAMES[f_to]})"))
            elif (importer.startswith(STAGES_PACKAGE + ".") and dep.startswith(STAGES_PACKAGE + ".")
                  and not dep.endswith(".registry") and not importer.endswith(".registry")):
                bad.append(Violation(importer, dep, "a stage imports another stage (shared code belongs in a "
                                                    "domain package)"))
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one unit (or a unit importing itself through others), among
    modules and among domain packages (Tarjan's algorithm, iterative)."""
    units: dict[str, set[str]] = {}
    for importer, deps in graph.items():
        u = unit_of(importer)
        units.setdefault(u, set())
        units[u] |= {unit_of(d) for d in deps if unit_of(d) != u}
    found = []
    for g in (graph, units):
        found += [sorted(c) for c in _strongly_connected(g) if len(c) > 1]
    return sorted(found)


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[set[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                result.append(component)
    return result


def render_floors(graph: dict[str, set[str]]) -> str:
    """The floors with their modules and how many project imports each makes (the import-graph test prints it)."""
    lines = []
    by_floor: dict[int, list[str]] = {}
    for name in graph:
        by_floor.setdefault(floor_of(name), []).append(name)
    for level in sorted(by_floor):
        lines.append(f"floor {level} ({FLOOR_NAMES[level]}): {len(by_floor[level])} modules")
        units: dict[str, int] = {}
        for name in by_floor[level]:
            units[unit_of(name) if level == 2 else name] = units.get(unit_of(name) if level == 2 else name, 0) + 1
        lines.append("  " + ", ".join(f"{u.removeprefix('pipelines.')}" + (f" ({n})" if n > 1 else "")
                                       for u, n in sorted(units.items())))
    edges = sum(len(d) for d in graph.values())
    lines.append(f"{len(graph)} modules, {edges} import edges")
    return "\n".join(lines)
