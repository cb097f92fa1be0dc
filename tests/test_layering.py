"""The package layering, checked: every project module imports only from its own layer or the
layers below it, at the top of the module.

Lowest first (README, "Layout"): errors, files, arrays, config -> data -> cache -> models ->
distill -> engine -> stages -> runtime -> benchmark -> footage -> the command line and the demo. A module is
parsed, not imported, so a violation is found even in code no test runs.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: package prefix -> layer number (a longer prefix wins)
LAYERS = {
    "pipeline.errors": 0,
    "pipeline.files": 0,
    "pipeline.arrays": 0,
    "pipeline.cores": 0,
    "pipeline.config": 0,
    "pipeline.data": 1,
    "cache": 2,
    "pipeline.models": 3,
    "pipeline.distill": 4,
    "pipeline.engine": 5,
    "pipeline.stages": 6,
    "pipeline.runtime": 7,
    "pipeline.benchmark": 8,
    "pipeline.footage": 9,
    "pipeline.demo": 10,
    "pipeline.ablation": 10,
    "cli": 10,
}
#: modules that must not run a network: stores, scoring, ranking and pages take arrays and files
#: only (so that ``search --hit`` and scoring a results file never load PyTorch)
NO_NETWORK = ("cache", "pipeline.arrays", "pipeline.files", "pipeline.runtime.types",
              "pipeline.runtime.calibration",
              "pipeline.runtime.faiss_index",
              "pipeline.benchmark.pictures",
              "pipeline.benchmark.results_file",
              "pipeline.benchmark.metrics", "pipeline.benchmark.protocols",
              "pipeline.benchmark.evaluator", "pipeline.benchmark.reference",
              "pipeline.benchmark.cbgm", "pipeline.benchmark.command",
              "pipeline.footage.store", "pipeline.footage.ranking", "pipeline.footage.search",
              "pipeline.footage.report", "pipeline.footage.pictures",
              "pipeline.footage.scoring", "pipeline.footage.tracks",
              "pipeline.footage.appearances", "pipeline.footage.rerank",
              "pipeline.footage.track_store")
NETWORK_MODULES = ("torch", "torchvision", "onnxruntime")


def runs_no_network(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in NO_NETWORK)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules() -> list[Path]:
    files = [ROOT / "cli.py", *sorted((ROOT / "pipeline").rglob("*.py")),
             *sorted((ROOT / "cache").rglob("*.py"))]
    return [f for f in files if "__pycache__" not in f.parts]


def layer_of(name: str) -> int | None:
    if name == "pipeline":       # the namespace package itself: imports nothing
        return 0
    best = None
    for prefix, layer in LAYERS.items():
        if name == prefix or name.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, layer)
    return None if best is None else best[1]


def imported_names(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """Absolute names an Import / ImportFrom node brings in (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".")
        keep = len(parts) - node.level + (1 if is_package else 0)
        base = ".".join(parts[:keep] + ([node.module] if node.module else []))
    return [base] + [f"{base}.{a.name}" for a in node.names]


def imports_of(path: Path, module: str | None = None) -> list[tuple[ast.AST, str, bool]]:
    """(node, imported name, inside a function) for every import of a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module, is_package = module or module_name(path), path.name == "__init__.py"
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for name in imported_names(child, module, is_package):
                    out.append((child, name, in_function))
            visit(child, inner)
    visit(tree, False)
    return out


def test_every_project_module_has_a_layer():
    missing = [module_name(p) for p in project_modules() if layer_of(module_name(p)) is None]
    assert not missing, f"modules outside every layer (add them to LAYERS): {missing}"


def test_imports_point_down_only():
    upward = []
    for path in project_modules():
        own = layer_of(module_name(path))
        for node, name, _ in imports_of(path):
            target = layer_of(name)
            if target is not None and target > own:
                upward.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not upward, "imports from a higher layer:\n" + "\n".join(sorted(set(upward)))


def test_project_imports_sit_at_module_top():
    inner = []
    for path in project_modules():
        lines = path.read_text().splitlines()
        for node, name, in_function in imports_of(path):
            if not in_function or layer_of(name) is None:
                continue
            if "optional" not in lines[node.lineno - 1]:
                inner.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not inner, ("project imports inside functions (move them to the top, or say why on "
                       "the line with '# optional ...'):\n" + "\n".join(sorted(set(inner))))


def test_scoring_and_stores_run_no_network():
    """A no-network module imports no network library, and of the project's layers from the
    models up only modules that are no-network themselves."""
    offenders = []
    for path in project_modules():
        name = module_name(path)
        if not runs_no_network(name):
            continue
        for node, imported, _ in imports_of(path):
            top = imported.split(".")[0]
            layer = layer_of(imported)
            package = imported in {"pipeline.runtime", "pipeline.benchmark", "pipeline.footage"}
            runs_models = (layer is not None and layer >= LAYERS["pipeline.models"]
                           and not package and not runs_no_network(imported)
                           and not runs_no_network(imported.rsplit(".", 1)[0]))
            if top in NETWORK_MODULES or runs_models:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {imported}")
    assert not offenders, "stores and scoring must not import networks:\n" + "\n".join(offenders)


@pytest.mark.parametrize("source, module, expected", [
    ("from .records import X", "pipeline.data.prw", "pipeline.data.records"),
    ("from . import losses", "pipeline.distill", "pipeline.distill"),
    ("from ..records import X", "pipeline.data.synthetic.world", "pipeline.data.records"),
    ("import cache.key", "pipeline.stages.teacher_cache", "cache.key"),
])
def test_relative_imports_resolve(source, module, expected):
    node = ast.parse(source).body[0]
    is_package = module == "pipeline.distill"
    assert imported_names(node, module, is_package)[0] == expected


def test_the_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "pipeline" / "data" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from pipeline.models.student import PersonSearchNet\n"
                   "def f():\n    from cache import TeacherCache\n")
    found = imports_of(bad, "pipeline.data.bad")
    names = {(n, inside) for _, n, inside in found}
    assert ("pipeline.models.student", False) in names
    assert ("cache", True) in names
    assert layer_of("pipeline.models.student") > layer_of("pipeline.data.bad")


MAX_FUNCTION_LINES = 60


def test_product_functions_read_at_once():
    """No function (or method) of the product code is longer than a screen."""
    long = []
    for path in project_modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)
