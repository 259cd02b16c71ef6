"""The repository's shape: package boundaries, no import cycles, no script importing a script,
no function-local import of a project module (the trick that hides a cycle), and per-script
config trees whose unknown-key check covers the keys other scripts own."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("accel", "common", "data", "evaluation", "models", "selfsup", "toys")
SCRIPTS = ("train_ssl", "train_supervised", "train_depth_ubn", "linear_eval", "lr_finder", "grad_error", "report", "submit", "export")
# The layering: a package imports only packages of the layers below its own (and itself), so
# models/ (networks) imports only common/, and the techniques of accel/ build on models/ and data/.
LAYERS = [("common",), ("data", "models", "evaluation"), ("accel",), ("selfsup", "toys")]
ALLOWED = {pkg: {p for lower in LAYERS[:i] for p in lower} for i, layer in enumerate(LAYERS) for pkg in layer}


def project_modules():
    out = {}
    for pkg in PACKAGES:
        for f in sorted(os.listdir(os.path.join(ROOT, pkg))):
            if f.endswith(".py"):
                name = pkg if f == "__init__.py" else f"{pkg}.{f[:-3]}"
                out[name] = os.path.join(ROOT, pkg, f)
    for s in SCRIPTS:
        out[s] = os.path.join(ROOT, f"{s}.py")
    return out


def imports_of(path, modules):
    """(top-level imports, function-local imports) of project modules in the file at `path`."""
    tree = ast.parse(open(path).read())
    top, local = set(), set()

    def names(node):
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from pkg import mod` imports pkg.mod when that is a module
            return [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names]
        return []

    for node in tree.body:
        for n in names(node):
            if n in modules:
                top.add(n)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                for n in names(sub):
                    if n in modules:
                        local.add(n)
    return top, local


def import_graph():
    modules = project_modules()
    return {m: imports_of(p, modules) for m, p in modules.items()}


def test_no_import_cycles_and_no_script_imports_a_script():
    graph = {m: top for m, (top, _) in import_graph().items()}
    for m, deps in graph.items():
        assert not (deps & set(SCRIPTS)), f"{m} imports the script(s) {deps & set(SCRIPTS)}"
    # depth-first search for a cycle
    state = {}

    def visit(m, path):
        state[m] = "open"
        for d in graph[m]:
            if state.get(d) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path + [m, d]))
            if d not in state:
                visit(d, path + [m])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [])


def test_packages_import_only_what_their_layer_allows():
    for m, (top, local) in import_graph().items():
        pkg = m.split(".")[0]
        if pkg in SCRIPTS:
            continue
        for d in top | local:
            dep = d.split(".")[0]
            assert dep == pkg or dep in ALLOWED[pkg], f"{m} imports {d}: {pkg}/ may import {sorted(ALLOWED[pkg])}"


def test_no_function_local_imports_of_project_modules():
    for m, (_, local) in import_graph().items():
        assert not local, f"{m} imports {sorted(local)} inside a function (move it to the top of the file)"


@pytest.mark.parametrize("script,key", [
    ("train_supervised.py", "interloss.partial_backprop=true"),
    ("train_supervised.py", "accel.progressive.mode=super"),
    ("train_supervised.py", "method.name=dino"),
    ("train_ssl.py", "select.method=fast"),
    ("train_ssl.py", "ubn.enabled=true"),
    ("train_depth_ubn.py", "knn.k=5"),
])
def test_a_key_another_script_owns_is_an_error(script, key):
    p = subprocess.run([sys.executable, script, key], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and f"unknown config key '{key.split('=')[0]}'" in lines[0], p.stderr
