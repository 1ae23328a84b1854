"""The project's own promises: CI runs the README's test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    """The shell commands in README.md's fenced ```bash blocks."""
    text = (ROOT / "README.md").read_text()
    return [
        line.strip()
        for block in re.findall(r"```bash\n(.*?)```", text, re.S)
        for line in block.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def test_ci_runs_the_readme_test_command():
    commands = readme_commands()
    test_command = next(c for c in commands if "pytest" in c)
    ci_lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert test_command in ci_lines


def test_readme_zoo_table_is_the_registry():
    # The README's table of the MetaFormer baselines is made from the registry, and
    # stays so: a model, count or checkpoint changed in one place fails here.
    from keras_poolformer import baselines, registry

    families = ["poolformer", "metaformer", *baselines.FAMILIES]
    assert sorted(families) == sorted({spec.family for spec in registry.MODELS.values()})
    assert registry.zoo_table(families) in (ROOT / "README.md").read_text()


# --- import cycles ----------------------------------------------------------------------
# Every module of the installed package (convert/ and training/ install as
# keras_poolformer.convert and keras_poolformer.training, see setup.py), with the
# first-party modules each imports anywhere in its source: at the top or inside a function.
_PACKAGES = {"keras_poolformer": "keras_poolformer", "convert": "keras_poolformer.convert",
             "training": "keras_poolformer.training"}  # fmt: skip


def _package_modules():
    modules = {}
    for folder, prefix in _PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            modules[".".join((prefix, *parts))] = path
    return modules


def import_graph():
    """``{module: set of package modules it imports}``, read with ``ast``: ``import a.b``
    and ``from a import b`` name module ``a.b`` where it is one, else ``a``."""
    import ast

    modules = _package_modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                for alias in node.names:
                    if f"{base}.{alias.name}" in modules:
                        imported.add(f"{base}.{alias.name}")
                    elif base in modules:
                        imported.add(base)
        graph[name] = imported - {name}
    return graph


def _reachable(graph, start):
    seen, todo = set(), [start]
    while todo:
        for module in graph[todo.pop()]:
            if module not in seen:
                seen.add(module)
                todo.append(module)
    return seen


def test_the_modules_the_models_build_on_import_no_model_module():
    """The registry, the tables and what the builders rely on (porting, the weights-file
    checks, the layers) import neither ``keras_poolformer.models`` nor the package, not
    even inside a function, and no cycle runs through them: they read the registry."""
    graph = import_graph()
    foundation = [
        "keras_poolformer.registry",
        "keras_poolformer.poolformer_table",
        "keras_poolformer.porting",
        "keras_poolformer.weights_file",
        "keras_poolformer.layers",
        "keras_poolformer.mixers",
        "keras_poolformer.norms",
        "keras_poolformer.files",
    ]
    for module in foundation:
        reached = _reachable(graph, module)
        assert module not in reached, f"{module} is in an import cycle"
        assert not reached & {"keras_poolformer", "keras_poolformer.models"}, (
            f"{module} imports the models: {sorted(reached)}"
        )


def test_no_import_cycle():
    """No module of the package imports, even inside a function, one that leads back to
    it (issue 14, item 6: layers/mixers and models/weights_file were tied before, and
    the release path went through the converter's model building)."""
    graph = import_graph()
    in_cycle = {module for module in graph if module in _reachable(graph, module)}
    assert not in_cycle, f"modules in an import cycle: {sorted(in_cycle)}"
