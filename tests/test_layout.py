"""The package's shape: each layer imports only the layers below it, and no two modules import each other.

Layers, bottom up: core modules (depthtune/*.py) -> backends -> stages -> distill -> experiments.
cli.py, api.py and __main__.py sit on top (the entry points dispatch to every product). Imports inside
functions count too: a lazy import is still a dependency. No module imports another's _private name.
"""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "depthtune"
LAYERS = {"": 0, "backends": 1, "stages": 2, "distill": 3, "experiments": 4}
ENTRY = {"depthtune.cli", "depthtune.api", "depthtune.__main__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every depthtune module that `path` imports, relative imports resolved."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("depthtune"):
                continue
            for alias in node.names:  # `from . import x` imports the module x
                sub = f"{mod}.{alias.name}"
                found.add(sub if (PKG.parent / (sub.replace(".", "/") + ".py")).exists() else mod)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("depthtune")}
    return found - {here}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PKG.rglob("*.py")}


def layer(mod: str) -> int:
    parts = mod.split(".")
    return LAYERS[parts[1]] if len(parts) >= 2 and parts[1] in LAYERS else 0


def test_each_layer_imports_only_layers_below_it():
    bad = [f"{m} -> {d}" for m, deps in graph().items() if m not in ENTRY
           for d in deps if layer(d) > layer(m) and d != "depthtune"]
    assert not bad, "imports that reach up a layer:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m, path):
        state[m] = 1
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                cycles.append(" -> ".join(path[path.index(d):] + [d]))
            elif d in g and not state.get(d):
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(g):
        if not state.get(m):
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_every_subpackage_says_what_it_holds():
    for init in PKG.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40, f"{init} needs a docstring that says what the package holds"


def private_imports(path: Path) -> list[str]:
    """`from x import _name` of a depthtune module other than the file itself (dunders excepted)."""
    here = module_name(path)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("depthtune")):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{here}: from {'.' * node.level}{node.module or ''} import {alias.name}")
    return found


def test_no_module_imports_another_modules_private_names():
    roots = [PKG, PKG.parent / "tests", PKG.parent / "bench"]
    bad = [line for root in roots for p in sorted(root.rglob("*.py")) for line in private_imports(p)]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_the_stage_order_is_written_once():
    """Only the stage table (depthtune/stages/__init__.py) lists the stages: no other module holds a
    sequence of four or more stage names."""
    from depthtune.stages import STAGES

    names = {s.name for s in STAGES}
    offenders = []
    for p in PKG.rglob("*.py"):
        if p == PKG / "stages" / "__init__.py":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.Tuple, ast.List)):
                strings = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
                if sum(s in names for s in strings) >= 4:
                    offenders.append(f"{p.relative_to(PKG)}:{node.lineno}")
    assert offenders == [], offenders
