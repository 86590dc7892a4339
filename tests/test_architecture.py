"""The package's shape, read from its source: layers import only downwards, there are no import cycles,
and interfaces are protocols, not `hasattr` probes."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "medprobe"
# Lower number = lower layer. A module may import its own sub-package and any strictly lower layer.
LAYERS = {"core": 0, "data": 1, "encoders": 1, "evaluation": 1, "embedding": 2, "probes": 2, "reporting": 3, "workflows": 4, "serving": 5, "cli": 6}


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name):
    """Every medprobe module `name` imports, at the top or inside a function: (imported module, line, names)."""
    tree = ast.parse(MODULES[name].read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, ()) for alias in node.names if alias.name.startswith("medprobe")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medprobe"):
            names = tuple(alias.name for alias in node.names)
            submodules = [f"{node.module}.{n}" for n in names if f"{node.module}.{n}" in MODULES]
            found += [(m, node.lineno, ()) for m in submodules] or [(node.module, node.lineno, names)]
    return found


def layer(name):
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_is_in_a_layer():
    assert {layer(m) for m in MODULES} - {None} == set(LAYERS)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_only_point_down(name):
    mine = layer(name)
    for target, line, names in imports(name):
        theirs = layer(target)
        if theirs is None:  # the package root: only its version string
            assert names == ("__version__",), f"{name}:{line} imports {names} from medprobe; import from the layer that defines it"
            continue
        assert theirs == mine or LAYERS[theirs] < LAYERS[mine], (
            f"{name}:{line} imports {target}: layer '{theirs}' ({LAYERS[theirs]}) is not below '{mine}' ({LAYERS[mine]})"
        )


def test_no_import_cycles_even_through_function_local_imports():
    graph = {name: {t for t, _, _ in imports(name) if t in MODULES} for name in MODULES}
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_no_hasattr_interface_checks():
    offenders = [f"{module_name(p)}:{i}" for p in PACKAGE.rglob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
                 if re.search(r"\bhasattr\(", line)]
    assert offenders == []


def test_no_argparse_outside_the_cli():
    offenders = [name for name, path in MODULES.items() if layer(name) != "cli" and re.search(r"argparse|add_argument|add_parser", path.read_text())]
    assert offenders == []


def test_library_errors_do_not_name_commands():
    """Which command makes a missing thing is the CLI's to say (MedprobeError.command), not the library's message's."""
    offenders = []
    for name, path in MODULES.items():
        if layer(name) == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None and "`medprobe " in ast.unparse(node.exc).split("command=")[0]:
                offenders.append(f"{name}:{node.lineno}")
    assert offenders == []


def test_the_command_line_starts_without_the_heavy_libraries():
    """`medprobe --help`, `cache` and `embed` start in a fifth of a second: building the parser loads no scikit-learn,
    SciPy, pandas, PyTorch or Ray (each command imports what it needs when it runs; scikit-learn alone is ~0.9 s)."""
    import subprocess
    import sys

    heavy = ("sklearn", "scipy", "pandas", "torch", "ray", "matplotlib")
    code = f"import sys; from medprobe.cli import build_parser; build_parser(); print(*[m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == [], f"building the CLI's parser imports {loaded}; import them inside the command that needs them"


@pytest.mark.xdist_group("suite")
def test_the_suites_worker_groups_reach_xdist(request):
    """conftest groups tests onto one worker (the Ray tests, the real-data stores, module fixtures) with xdist_group; xdist
    schedules a group by the `@group` its own hook appends to the node id. A pytest that keeps ids where that hook does not
    write (9.2, with pytest-xdist 3.8) drops every group without a word, and the Ray tests then run on both workers at once."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run by pytest-xdist with --dist loadgroup")
    assert request.node.nodeid.endswith("@suite"), f"{request.node.nodeid}: xdist_group is ignored by this pytest and pytest-xdist"
