"""No import in ``hub/`` runs up from a lower layer to a higher one: the layers of docs/LAYOUT.md, checked.

Every module is parsed with :mod:`ast` (nothing is imported), and every ``import`` and ``from … import``
counts wherever it stands: at module level, inside a function (the lazy imports of heavy libraries), or
under ``if TYPE_CHECKING``. A package or top-level module sits in one layer; it may import from its own
layer and from the layers below it, never from a layer above.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HUB = ROOT / "hub"

#: The layers of the ``hub`` package, bottom to top, each with its packages and top-level modules (by
#: the name after ``hub.``; ``hub`` itself is the package's ``__init__``). docs/LAYOUT.md says what each
#: one owns; :func:`test_docs_layout_table_lists_the_same_layers` keeps the two the same.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    (
        "ground floor",
        frozenset(
            {
                "hub",
                "errors",
                "settings",
                "logging",
                "topics",
                "schemas",
                "tokens",
                "serving",
                "cli_support",
                "records",
                "table_batches",
                "audit_vocabulary",
                "metrics",
            }
        ),
    ),
    ("Kafka plumbing", frozenset({"kafka", "broker"})),
    ("facts and ids", frozenset({"normalise", "pathway"})),
    ("configuration", frozenset({"sources"})),
    ("ingest", frozenset({"ingest"})),
    ("stage cores", frozenset({"identity", "consent", "networks", "alerts", "crypto", "audit", "acl"})),
    ("pipeline", frozenset({"streams"})),
    ("services", frozenset({"gateway", "console", "keyservice", "demo"})),
    ("commands", frozenset({"ops", "keys", "publish", "run", "cli", "bench_cli", "__main__"})),
)


@dataclass(frozen=True)
class Import:
    """One import statement's target, resolved to a module of ``hub``."""

    importer: str  # dotted module name, e.g. hub.ingest.pipeline
    imported: str  # dotted module name, e.g. hub.sources.registry
    line: int


def module_name(path: Path, root: Path = HUB) -> str:
    """``hub/ingest/pipeline.py`` → ``hub.ingest.pipeline``; a package's ``__init__.py`` → the package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def hub_modules(root: Path = HUB) -> dict[str, tuple[str, bool]]:
    """Every module of the package under ``root``: its dotted name → (source text, is a package)."""
    return {
        module_name(path, root): (path.read_text("utf-8"), path.name == "__init__.py")
        for path in sorted(root.rglob("*.py"))
    }


def imports_of(importer: str, source: str, *, is_package: bool, known: frozenset[str]) -> Iterator[Import]:
    """The ``hub`` modules that ``source`` (the module ``importer``) imports, at any depth of its tree.

    ``from hub.x import y`` names the module ``hub.x.y`` when that is a module of ``known`` (``from hub
    import metrics``), otherwise ``hub.x`` (a name defined there). Relative imports are resolved first.
    """
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    for node in ast.walk(ast.parse(source, filename=importer)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "hub" or alias.name.startswith("hub."):
                    yield Import(importer, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            if origin != "hub" and not origin.startswith("hub."):
                continue
            for alias in node.names:
                submodule = f"{origin}.{alias.name}"
                yield Import(importer, submodule if submodule in known else origin, node.lineno)


def unit_of(module: str) -> str:
    """The package or top-level module a module belongs to: ``hub.ingest.pipeline`` → ``ingest``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_index(layers: tuple[tuple[str, frozenset[str]], ...] = LAYERS) -> dict[str, int]:
    """Each package or top-level module → the position of its layer, 0 at the bottom."""
    return {unit: position for position, (_, units) in enumerate(layers) for unit in units}


def upward_imports(
    modules: Mapping[str, tuple[str, bool]], layers: tuple[tuple[str, frozenset[str]], ...] = LAYERS
) -> list[str]:
    """One line per import from a lower layer to a higher one, naming both modules and both layers."""
    index = layer_index(layers)
    known = frozenset(modules)
    problems: dict[str, None] = {}  # one line per statement, in order, even for `from x import a, b`
    for importer, (source, is_package) in sorted(modules.items()):
        for found in imports_of(importer, source, is_package=is_package, known=known):
            low, high = index.get(unit_of(found.importer)), index.get(unit_of(found.imported))
            if low is None or high is None:
                unplaced = found.importer if low is None else found.imported
                problems[f"{unplaced} has no layer (imported at {found.importer}:{found.line})"] = None
            elif high > low:
                problems[
                    f"{found.importer} (layer {low + 1}, {layers[low][0]}) imports {found.imported} "
                    f"(layer {high + 1}, {layers[high][0]}) at line {found.line}"
                ] = None
    return list(problems)


def test_every_package_and_top_level_module_of_hub_sits_in_exactly_one_layer() -> None:
    """A new package must be given a layer (here and in docs/LAYOUT.md) before the layer check can hold."""
    units = {unit_of(module) for module in hub_modules()}
    placed = [unit for _, members in LAYERS for unit in members]
    assert len(placed) == len(set(placed)), "a package is placed in two layers"
    assert units - set(placed) == set(), "packages without a layer"
    assert set(placed) - units == set(), "layers name packages that no longer exist"


def test_no_import_runs_up_from_a_lower_layer_to_a_higher_one() -> None:
    """Every import of every module of hub/, function-level ones included, goes to its own layer or below."""
    problems = upward_imports(hub_modules())
    assert problems == [], "imports that run up the layers:\n" + "\n".join(problems)


def test_an_upward_import_is_found_and_named_with_both_layers() -> None:
    """The check fails on a lower module importing a higher one, inside a function as at the top, under
    ``if TYPE_CHECKING``, relatively or not, and names the importing module, the imported one and
    both layers."""
    modules = {
        "hub": ("", True),
        "hub.errors": ("def late() -> None:\n    from hub.streams import app\n", False),
        "hub.metrics": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from hub import streams\n",
            False,
        ),
        "hub.streams": ("", True),
        "hub.streams.app": ("", False),
        "hub.streams.routing": ("from ..ops import cli\nfrom hub import errors\n", False),
        "hub.ops": ("", True),
        "hub.ops.cli": ("import hub.streams.routing\n", False),
    }
    assert upward_imports(modules) == [
        "hub.errors (layer 1, ground floor) imports hub.streams.app (layer 7, pipeline) at line 2",
        "hub.metrics (layer 1, ground floor) imports hub.streams (layer 7, pipeline) at line 3",
        "hub.streams.routing (layer 7, pipeline) imports hub.ops.cli (layer 9, commands) at line 1",
    ]


def test_an_import_within_a_layer_or_downward_passes() -> None:
    """Downward and same-layer imports are not reported: the check does not cry wolf."""
    modules = {
        "hub.gateway": ("", True),
        "hub.gateway.app": ("from hub.console import app\nfrom hub.errors import HubError\n", False),
        "hub.console": ("", True),
        "hub.console.app": ("", False),
        "hub.errors": ("", False),
    }
    assert upward_imports(modules) == []


def test_docs_layout_table_lists_the_same_layers() -> None:
    """docs/LAYOUT.md names the layers in this order and its table has one row per package, in the
    layer this test places it."""
    text = (ROOT / "docs" / "LAYOUT.md").read_text("utf-8")
    named = re.findall(r"^(\d+)\. \*\*(.+?)\*\*", text, flags=re.MULTILINE)
    assert [(int(number), name.lower()) for number, name in named] == [
        (position + 1, name.lower()) for position, (name, _) in enumerate(LAYERS)
    ]
    documented: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"\|\s*(\d+)\s*\|\s*`([a-z_]+)`\s*\|", line)
        if match:
            documented[match.group(2)] = match.group(1)
    expected = {unit: str(layer + 1) for unit, layer in layer_index().items()}
    assert documented == expected


def package_cycles(modules: Mapping[str, tuple[str, bool]]) -> list[list[str]]:
    """Groups of two or more packages that import one another, directly or around a loop (Tarjan)."""
    known = frozenset(modules)
    graph: dict[str, set[str]] = defaultdict(set)
    for importer, (source, is_package) in modules.items():
        for found in imports_of(importer, source, is_package=is_package, known=known):
            if unit_of(found.importer) != unit_of(found.imported):
                graph[unit_of(found.importer)].add(unit_of(found.imported))
    order: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(unit: str) -> None:
        order[unit] = lowest[unit] = len(order)
        stack.append(unit)
        for other in sorted(graph[unit]):
            if other not in order:
                visit(other)
                lowest[unit] = min(lowest[unit], lowest[other])
            elif other in stack:
                lowest[unit] = min(lowest[unit], order[other])
        if lowest[unit] == order[unit]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == unit:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for unit in sorted(graph):
        if unit not in order:
            visit(unit)
    return cycles


def test_no_packages_import_each_other_around_a_loop() -> None:
    """Within a layer too, the packages' imports form no loop (ops ↔ crypto was one)."""
    assert package_cycles(hub_modules()) == []


def test_a_loop_between_two_packages_of_one_layer_is_found() -> None:
    """The loop check sees a loop the layer check allows: two packages of the stage cores, each
    importing the other (one of them inside a function)."""
    modules = {
        "hub.crypto": ("", True),
        "hub.crypto.erase": ("from hub.consent.audit import audit_id\n", False),
        "hub.consent": ("", True),
        "hub.consent.audit": ("def f() -> None:\n    from hub.crypto import erase\n", False),
    }
    assert upward_imports(modules) == []
    assert package_cycles(modules) == [["consent", "crypto"]]


def loaded_after_import(module: str) -> list[str]:
    """The pipeline's modules (``hub.streams``, faust) that a fresh interpreter holds after importing
    ``module``: what a process started on it loads."""
    probe = (
        f"import sys, {module}; "
        "print('\\n'.join(sorted(m for m in sys.modules if m.split('.')[0] == 'faust' "
        "or m == 'hub.streams' or m.startswith('hub.streams.'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT, timeout=120
    )
    return result.stdout.split()


@pytest.mark.parametrize("module", ["hub.gateway.app", "hub.gateway.cli"])
def test_the_gateway_process_does_not_load_the_pipeline(module: str) -> None:
    """The alert gateway imports hub.metrics for its /metrics, and nothing of hub.streams or faust
    comes with it: metrics sits on the ground floor."""
    assert loaded_after_import(module) == []


def test_the_pipeline_probe_sees_the_pipeline() -> None:
    """The probe above is not blind: importing the routing of the stages shows hub.streams."""
    assert "hub.streams.routing" in loaded_after_import("hub.streams.routing")
