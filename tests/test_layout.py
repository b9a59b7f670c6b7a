"""The package shows its shape (ADR 0024): a short top level, a docstring for every subpackage,
and imports that only run downward, from the entry points to the errors.

The rule is checked on the source with ``ast``, not by importing it: every ``import`` counts,
at module level, inside functions and under ``if TYPE_CHECKING:`` alike, since a lazy import is
still a dependency. The checker's own tests below run it on small synthetic modules, so a
check that has stopped catching anything fails too.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli before 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "trainwire"
CONTAINERS = ROOT / "containers"  # installed as trainwire.containers (ADR 0005)

MAX_TOP_LEVEL_MODULES = 12

# The layers, lowest first. A module may import from its own layer and from the layers above it
# in this table, never from one below it. The names are what follows ``trainwire.``: a subpackage,
# a top-level module, or ``trainwire`` itself (the package's public face, ``from trainwire import
# Trainer``, which imports the loop, the policies and the sinks, so only the top may use it).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "logs", "registry"),  # what every layer raises, and the table of options (names, imported when chosen)
    ("policies", "sinks", "data", "models"),  # the decisions in the loop, where metrics go, the batches, the networks
    ("runtime",),  # what a run executes on: strategy, precision, compile, throughput, gradient health, process
    ("checkpointing", "checkpoints"),  # saving and restoring a run; ``checkpoints`` is its public shim
    ("loop",),  # the Trainer, the Step it calls, the hooks, the settings it reads
    ("paradigms",),  # the steps and objectives beyond plain supervised training
    ("config",),  # Hydra composition, with schemas made from the registry's signatures
    ("containers",),  # the composition root
    ("jobs", "cli", "testing", "__main__", "trainwire"),  # the ways in: a job, the command line, test fakes
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


@dataclass(frozen=True)
class Import:
    """One import of a trainwire module by another, where it is written."""

    importer: str  # dotted module name
    target: str  # the module it imports (a package when the name is not a module of its own)
    path: str
    line: int
    text: str
    type_only: bool  # under ``if TYPE_CHECKING:``

    def __str__(self) -> str:
        return f"{self.path}:{self.line} {unit(self.importer)} -> {unit(self.target)}: {self.text}"


def unit(module: str) -> str:
    """The name of ``module``'s row in LAYERS: ``trainwire.loop.trainer`` -> ``loop``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST, type_only: bool = False) -> Iterable[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement in the tree, at any depth, and whether it sits under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, type_only
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from _import_nodes(ast.Module(body=[child], type_ignores=[]), True)
            for child in node.orelse:
                yield from _import_nodes(ast.Module(body=[child], type_ignores=[]), type_only)
        else:
            yield from _import_nodes(node, type_only)


def imports_of(module: str, source: str, *, path: str, package: bool, modules: Iterable[str]) -> list[Import]:
    """The trainwire imports in ``source``; ``modules`` are the names that exist, to tell a module from a name in one."""
    known = set(modules)
    found = []
    for node, type_only in _import_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:  # relative: from the module's own package upward
                base = module.split(".") if package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            targets = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in known else origin for alias in node.names]
        text = ast.get_source_segment(source, node) or ast.unparse(node)
        for target in dict.fromkeys(targets):
            if target.split(".")[0] == "trainwire":
                found.append(Import(module, target, path, node.lineno, " ".join(text.split()), type_only))
    return found


def layer_violations(imports: Iterable[Import]) -> list[str]:
    """Each import that runs from a lower layer to a higher one, or from or to a name LAYERS does not rank."""
    problems = []
    for imp in imports:
        low, high = unit(imp.importer), unit(imp.target)
        for name in (low, high):
            if name not in RANK:
                problems.append(f"{imp}: {name!r} has no row in LAYERS (give it one, with the reason)")
        if low in RANK and high in RANK and RANK[low] < RANK[high]:
            allowed = ", ".join(name for row in LAYERS[: RANK[low] + 1] for name in row)
            problems.append(f"{imp} (a module of {low} may import only {allowed})")
    return problems


def cycles(imports: Iterable[Import]) -> list[list[str]]:
    """Groups of modules that import one another, in a loop of any length.

    A type-only import inside one subpackage is left out: it is how two modules of one idea
    name each other's types (``loop/hooks.py`` annotates with ``loop/trainer.py``'s ``TrainState``),
    and it runs at no import.
    """
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.type_only and unit(imp.importer) == unit(imp.target):
            continue
        if imp.importer != imp.target:
            graph.setdefault(imp.importer, set()).add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _module_name(path: Path) -> str:
    if path.is_relative_to(SRC):
        parts = ["trainwire", *path.relative_to(SRC).with_suffix("").parts]
    else:
        parts = ["trainwire", "containers", *path.relative_to(CONTAINERS).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_sources() -> dict[str, Path]:
    paths = sorted(SRC.rglob("*.py")) + sorted(CONTAINERS.rglob("*.py"))
    return {_module_name(path): path for path in paths}


def _package_imports() -> list[Import]:
    sources = _package_sources()
    return [imp for name, path in sources.items()
            for imp in imports_of(name, path.read_text(), path=str(path.relative_to(ROOT)),
                                  package=path.name == "__init__.py", modules=sources)]


# --- the package as it is ------------------------------------------------------------------------------


def test_the_top_level_holds_at_most_twelve_modules():
    modules = sorted(path.name for path in SRC.glob("*.py"))
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, f"{len(modules)} modules at the top of src/trainwire: {modules}"


def test_every_subpackage_says_what_it_holds():
    inits = sorted(SRC.rglob("__init__.py")) + [CONTAINERS / "__init__.py"]
    assert len(inits) >= 9  # the root, containers and the seven subpackages at least: the glob found them
    silent = [str(path.relative_to(ROOT)) for path in inits if not ast.get_docstring(ast.parse(path.read_text()))]
    assert not silent, f"subpackages without a docstring in __init__.py: {silent}"


def test_every_subpackage_ships_in_the_wheel():
    """``pyproject.toml`` lists its packages one by one (ADR 0005): a subpackage left out works in an
    editable install and is missing from a built wheel."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {_module_name(path) for path in SRC.rglob("__init__.py")} | {"trainwire.containers"}
    assert not packages - listed, f"not in [tool.setuptools] packages: {sorted(packages - listed)}"


def test_every_subpackage_and_top_level_module_has_a_row_in_the_layers():
    names = {unit(name) for name in _package_sources()}
    assert names <= set(RANK), f"not in LAYERS: {sorted(names - set(RANK))}"
    assert {"loop", "policies", "checkpointing", "runtime", "paradigms", "sinks", "data", "cli", "containers"} <= names


def test_imports_run_only_downward():
    imports = _package_imports()
    assert len(imports) > 100  # the scan read the package
    problems = layer_violations(imports)
    assert not problems, "imports that run upward (ADR 0024):\n" + "\n".join(problems)


def test_no_modules_import_one_another():
    groups = cycles(_package_imports())
    assert not groups, f"import cycles: {groups}"


def test_the_known_type_only_cycle_in_the_loop_is_still_type_only():
    """``loop/hooks.py`` names the trainer's types only for annotations; at run time only the trainer imports hooks."""
    imports = [imp for imp in _package_imports()
               if {imp.importer, imp.target} == {"trainwire.loop.hooks", "trainwire.loop.trainer"}]
    assert {(imp.importer, imp.type_only) for imp in imports} == {
        ("trainwire.loop.hooks", True), ("trainwire.loop.trainer", False)}


# --- the checker, on synthetic modules ----------------------------------------------------------------------


def _check(sources: Mapping[str, str], packages: Iterable[str] = ()) -> list[Import]:
    modules = set(sources) | {"trainwire.registry", "trainwire.loop.trainer", "trainwire.logs"}
    return [imp for name, source in sources.items()
            for imp in imports_of(name, source, path=name.replace(".", "/") + ".py",
                                  package=name in packages, modules=modules)]


def test_the_checker_catches_an_upward_import_and_says_where():
    imports = _check({"trainwire.policies.lr": "import torch\n\nfrom trainwire.loop.trainer import Trainer\n"})
    problems = layer_violations(imports)
    assert len(problems) == 1
    assert problems[0].startswith("trainwire/policies/lr.py:3 policies -> loop: from trainwire.loop.trainer import Trainer")
    assert problems[0].endswith(f"(a module of policies may import only {', '.join(LAYERS[0] + LAYERS[1])})")


def test_the_checker_counts_imports_in_functions_and_under_type_checking():
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from trainwire.loop.trainer import TrainState\n"
        "def later():\n"
        "    import trainwire.runtime.process as process\n"
        "class Sink:\n"
        "    def log(self):\n"
        "        if True:\n"
        "            from trainwire import Trainer\n"  # the public face is the top layer
    )
    problems = layer_violations(_check({"trainwire.sinks.base": source}))
    assert [problem.split(" ")[0] for problem in problems] == [
        "trainwire/sinks/base.py:3", "trainwire/sinks/base.py:5", "trainwire/sinks/base.py:9"]


def test_the_checker_allows_downward_peer_and_relative_imports():
    imports = _check({
        "trainwire.loop.trainer": "from trainwire.policies.lr import LRPolicy\nfrom trainwire import registry\n",
        "trainwire.policies.lr": "from trainwire.errors import ConfigError\nfrom trainwire.sinks.base import MetricsSink\n",
        "trainwire.containers": "from .container import TrainerContainer\nfrom trainwire.config import compose\n",
        "trainwire.containers.container": "from trainwire.loop.trainer import Trainer\n",
    }, packages={"trainwire.containers"})
    assert {imp.target for imp in imports if imp.importer == "trainwire.containers"} == {
        "trainwire.containers.container", "trainwire.config"}
    assert {imp.target for imp in imports if imp.importer == "trainwire.loop.trainer"} == {
        "trainwire.policies.lr", "trainwire.registry"}  # ``from trainwire import registry`` is the module, not the face
    assert layer_violations(imports) == []


def test_the_checker_refuses_a_name_with_no_layer():
    problems = layer_violations(_check({"trainwire.utils": "from trainwire.errors import ConfigError\n"}))
    assert problems == ["trainwire/utils.py:1 utils -> errors: from trainwire.errors import ConfigError: "
                        "'utils' has no row in LAYERS (give it one, with the reason)"]


def test_the_checker_finds_cycles_but_allows_a_type_only_one_inside_a_subpackage():
    type_only = {
        "trainwire.loop.hooks": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from trainwire.loop.trainer import T\n",
        "trainwire.loop.trainer": "from trainwire.loop.hooks import emit\n",
    }
    assert cycles(_check(type_only)) == []
    at_run_time = dict(type_only, **{"trainwire.loop.hooks": "def f():\n    from trainwire.loop.trainer import T\n"})
    assert cycles(_check(at_run_time)) == [["trainwire.loop.hooks", "trainwire.loop.trainer"]]
    across = {  # a type-only import across subpackages still closes a loop (and runs upward besides)
        "trainwire.policies.lr": "import typing\nif typing.TYPE_CHECKING:\n    from trainwire.loop.steps import Step\n",
        "trainwire.loop.steps": "from trainwire.policies.lr import LRPolicy\n",
    }
    assert cycles(_check(across)) == [["trainwire.loop.steps", "trainwire.policies.lr"]]
    assert len(layer_violations(_check(across))) == 1
