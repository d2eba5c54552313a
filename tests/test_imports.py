"""The package's imports go one way (layers -> model -> generation/training -> commands).

The module-level import graph of picogpt, read with `ast` (nothing is imported), must have no
cycle; and no function may import anything, except the few optional third-party packages
listed in LAZY below, each with the reason it cannot be imported at the top. An import hidden
inside a function is how a cycle hides, so a new one must be justified here.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "picogpt"

# Third-party packages that may be imported inside a function, and why: each is optional, so
# importing it at the top would make picogpt fail to import where it is absent.
LAZY = {
    "cupy": "the GPU is optional (the `gpu` extra); CuPy is asked only once a GPU is in use",
    "tiktoken": "the teaching BPE and the exercises work without loading tiktoken's tables",
    "mpi4py": "data parallelism is optional; MPI is loaded only when a run is launched across processes",
    "hypothesis": "optional (the `exercises` extra): listing and showing exercises work without it",
}


def lazy_ok(imported):
    return imported.partition(".")[0] in LAZY


def module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_package(name):
    return MODULES[name].name == "__init__.py"


def targets(node, importer):
    """The modules an Import/ImportFrom node names, absolute ('picogpt.layers', 'numpy')."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level == 0:
        base = node.module
    else:
        here = importer if is_package(importer) else importer.rpartition(".")[0]
        for _ in range(node.level - 1):
            here = here.rpartition(".")[0]
        base = f"{here}.{node.module}" if node.module else here
    # `from pkg import sub` imports the submodule pkg.sub when there is one, else names of pkg.
    subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
    return subs if len(subs) == len(node.names) else subs + [base]


def inner(name):
    """The picogpt module an import refers to (the longest known prefix), or None."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def scan(name):
    """(module-level imports, [(function-level import, line)]) of one module."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    top, lazy = [], []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for t in targets(child, name):
                    (lazy if in_function else top).append((t, child.lineno))
            funcs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
            visit(child, in_function or isinstance(child, funcs))

    visit(tree, False)
    return [t for t, _ in top], lazy


SCANS = {name: scan(name) for name in MODULES}


def import_graph():
    """picogpt module -> the picogpt modules it imports at module level."""
    return {name: sorted({inner(t) for t in top if inner(t) and inner(t) != name})
            for name, (top, _) in SCANS.items()}


def find_cycle(graph):
    """One import cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def dfs(node):
        state[node] = "open"
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in graph:
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def test_the_scan_sees_the_package():
    graph = import_graph()
    assert "picogpt.model" in graph and "picogpt.layers" in graph["picogpt.model"]
    assert "picogpt.generation" in graph["picogpt.model"]
    assert "picogpt.exercises" in graph["picogpt.exercises.__main__"]


def test_find_cycle_finds_one():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": [], "c": ["a", "b"]}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_import_inside_a_function(name):
    bad = [f"{MODULES[name].name}:{line} imports {t}" for t, line in SCANS[name][1] if not lazy_ok(t)]
    assert not bad, "import inside a function (move it to the top, or justify it in LAZY): " + "; ".join(bad)


def test_every_lazy_import_listed_is_still_there():
    present = {t.partition(".")[0] for _, lazy in SCANS.values() for t, _ in lazy}
    assert set(LAZY) <= present, f"stale LAZY entries: {sorted(set(LAZY) - present)}"


def test_lazy_imports_are_third_party():
    assert "picogpt" not in LAZY and not lazy_ok("picogpt.model")
