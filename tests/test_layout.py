"""The package's shape: layers, import direction, no cycles, small modules and functions.

Parses the sources (nothing is imported), so a violation names the file and
line. The layers are the table of `docs/architecture.md`; a new module must be
placed in `LAYERS` before it can be imported.
"""

import ast
import pathlib
import re
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "edgekeras"

# Lowest first. A module may import from a strictly lower layer, or from its
# own top-level package/module (its siblings). `edgekeras/__init__.py` (the
# facade of lazily loaded public names) and `__main__` sit above everything.
LAYERS = (
    ("errors",),
    ("arguments", "choices", "compat", "io", "memory", "pareto"),
    ("backend",),
    ("runtime",),
    ("images",),
    ("schedules", "sparsity", "distillation", "distribute", "data", "folders"),
    ("depthwise_quantizer",),
    ("models",),
    ("quantize_configs",),
    ("quantization",),
    ("qat",),
    ("litert",),
    ("features", "channels"),
    ("callbacks",),
    ("trainers",),
    ("tuning",),
    ("app",),
)
TOP = ("__init__", "__main__")
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
MODULE_NAME = re.compile(r"^edgekeras(\.\w+)+$")


def module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def component(name):
    """`edgekeras.litert.export` -> "litert"; the package itself -> "__init__"."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def sources():
    return sorted(PACKAGE.rglob("*.py"))


def _parents(tree):
    parents = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    return parents


def _inside_function(node, parents):
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return True
    return False


def edgekeras_imports(path):
    """`[(line, imported name, inside a function, an import statement)]` of one file.

    Counts import statements, and module names given as string constants
    (`importlib.import_module` targets such as the CLI's commands module and
    the package's lazy-name table), so deferred imports obey the layers too.
    `from a.b import c` is reported as `a.b.c`; `known_module` trims it to
    the module it names.
    """
    tree = ast.parse(path.read_text(), str(path))
    parents = _parents(tree)
    found = []
    for node in ast.walk(tree):
        statement = True
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_NAME.match(node.value):
            if isinstance(parents.get(node), ast.Expr):  # a docstring is no import
                continue
            names, statement = [node.value], False
        else:
            continue
        for name in names:
            if name == "edgekeras" or name.startswith("edgekeras."):
                found.append((node.lineno, name, _inside_function(node, parents), statement))
    return found


def known_module(name):
    """The longest prefix of `name` that is an edgekeras module (`from x import name`)."""
    while name:
        relative = pathlib.Path(*name.split("."))
        if (PACKAGE.parent / relative).with_suffix(".py").is_file() or (PACKAGE.parent / relative / "__init__.py").is_file():
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph():
    graph = {}
    for path in sources():
        targets = {known_module(name) for _, name, _, _ in edgekeras_imports(path)}
        graph[module_name(path)] = {t for t in targets if t and t != module_name(path)}
    return graph


def test_every_module_has_a_layer():
    unplaced = sorted({component(module_name(p)) for p in sources()} - set(RANK) - set(TOP))
    assert not unplaced, f"place these in LAYERS (tests/test_layout.py) and docs/architecture.md: {unplaced}"


def test_imports_point_downward():
    wrong = []
    for path in sources():
        source = component(module_name(path))
        if source in TOP:
            continue
        for line, name, _, _ in edgekeras_imports(path):
            target = component(known_module(name) or name)
            if target in TOP or (target != source and RANK.get(target, -1) >= RANK[source]):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({source}, layer {RANK[source]}) imports {name}")
    assert not wrong, "imports must point to a lower layer:\n" + "\n".join(wrong)


def test_no_edgekeras_import_inside_a_function():
    inside = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
        for path in sources()
        for line, name, in_function, statement in edgekeras_imports(path)
        if in_function and statement
    ]
    assert not inside, "edgekeras imports belong at module level:\n" + "\n".join(inside)


def test_no_import_cycle():
    graph = import_graph()
    visiting, done, cycles = [], set(), []

    def visit(module):
        if module in visiting:
            cycles.append(visiting[visiting.index(module):] + [module])
            return
        if module in done:
            return
        visiting.append(module)
        for target in sorted(graph.get(module, ())):
            visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_modules_are_small():
    large = [
        f"{path.relative_to(PACKAGE.parent)}: {count} lines"
        for path in sources()
        if (count := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not large, f"modules over {MAX_MODULE_LINES} lines (split by concern):\n" + "\n".join(large)


def test_functions_are_short():
    long = []
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}: {length} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


@pytest.mark.parametrize(
    "modules", ["edgekeras", "edgekeras.app.cli", "edgekeras.app.config", "edgekeras.errors, edgekeras.choices", "edgekeras.memory"]
)
def test_light_modules_do_not_import_tensorflow(modules):
    # `edgekeras --help` and reading a config must not pay TensorFlow's start-up.
    code = f"import sys, {modules}; assert 'tensorflow' not in sys.modules, sorted(m for m in sys.modules if 'tensorflow' in m)[:3]"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_checker_sees_a_violation(tmp_path):
    # The rules above would pass vacuously if the parser found no imports.
    probe = tmp_path / "probe.py"
    probe.write_text("from edgekeras.app import pipeline\n\ndef f():\n    import edgekeras.models\n")
    found = edgekeras_imports(probe)
    assert (1, "edgekeras.app.pipeline", False, True) in found and (4, "edgekeras.models", True, True) in found
    assert sum(len(targets) for targets in import_graph().values()) > 50


# Which Keras a model uses is asked in one place: the seam (`edgekeras/backend/`),
# the QAT engines behind it (`edgekeras/qat/`), and `compat.py`, the
# foundation that imports tf_keras and defines the Keras 3 test the seam uses
# (it sits below the seam so that tf_keras-only code can refuse Keras 3).
KERAS_SEAM = ("backend", "qat")
KERAS_SEAM_MODULES = ("edgekeras.compat",)
KERAS_QUESTIONS = ("is_keras3", "is_keras3_object")
KERAS3_MODULE = re.compile(r"^keras(\.|$)")
KERAS_MODULE_PATH = re.compile(r"^keras\.")


def keras_version_tests(path):
    """`[(line, what)]`: the places where one file asks which Keras it has.

    An import of Keras 3 (`import keras`, `from keras... import`; not
    `keras_tuner`), a call or import of `is_keras3`/`is_keras3_object`, a
    read of `__version__` or `__module__` (how a class's Keras is told), a
    "keras." module-path string, and `tf.keras` (Keras 2 or 3 depending on
    the environment).
    """
    tree = ast.parse(path.read_text(), str(path))
    parents = _parents(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names if KERAS3_MODULE.match(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if KERAS3_MODULE.match(node.module):
                found.append((node.lineno, f"from {node.module} import"))
            found += [(node.lineno, f"imports {a.name}") for a in node.names if a.name in KERAS_QUESTIONS]
        elif isinstance(node, ast.Name) and node.id in KERAS_QUESTIONS:
            found.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute):
            if node.attr in KERAS_QUESTIONS or node.attr in ("__version__", "__module__"):
                found.append((node.lineno, f".{node.attr}"))
            elif node.attr == "keras" and isinstance(node.value, ast.Name) and node.value.id in ("tf", "tensorflow"):
                found.append((node.lineno, f"{node.value.id}.keras"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and KERAS_MODULE_PATH.match(node.value):
            # Compared with, or the prefix of a `startswith`: a module name
            # tested (a message that starts with "keras.utils..." is not).
            parent = parents.get(node)
            if isinstance(parent, ast.Compare) or (
                isinstance(parent, ast.Call) and isinstance(parent.func, ast.Attribute) and parent.func.attr == "startswith"
            ):
                found.append((node.lineno, repr(node.value)))
    return found


def test_only_the_seam_asks_which_keras():
    wrong = [
        f"{path.relative_to(PACKAGE.parent)}:{line} {what}"
        for path in sources()
        if component(module_name(path)) not in KERAS_SEAM and module_name(path) not in KERAS_SEAM_MODULES
        for line, what in keras_version_tests(path)
    ]
    assert not wrong, (
        "only edgekeras/backend/ (and the QAT engines) may ask which Keras a model uses; "
        "call edgekeras.backend.for_model(model) instead:\n" + "\n".join(wrong)
    )


def test_the_keras_checker_sees_a_violation(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        '"""keras.docstring"""\n'
        "import keras\n"
        "import keras_tuner\n"
        "from keras.layers import Dense\n"
        "from edgekeras.backend import is_keras3\n"
        "def f(model, tf):\n"
        "    return is_keras3(model) or backend.is_keras3(model) or tf.keras or type(model).__module__\n"
        "def g(keras, module):\n"
        "    return keras.__version__.startswith('3') or module.startswith('keras.src')\n"
        "def h(module):\n"
        "    return module == 'keras.models' or print('keras.utils.to_categorical is not a test')\n"
    )
    found = keras_version_tests(probe)
    assert {line for line, _ in found} == {2, 4, 5, 7, 9, 11}
    assert sorted(what for line, what in found if line == 7) == [".__module__", ".is_keras3", "is_keras3", "tf.keras"]
    assert sorted(what for line, what in found if line == 9) == ["'keras.src'", ".__version__"]
    # The seam itself asks, so the rule has something to exempt.
    assert keras_version_tests(PACKAGE / "backend" / "__init__.py")


def test_the_architecture_page_names_every_module():
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    missing = [
        str(path.relative_to(PACKAGE))
        for path in sources()
        if path.name not in ("__init__.py", "__main__.py") and f"`{path.name}`" not in page
    ]
    assert not missing, f"name these modules in docs/architecture.md: {missing}"
