"""The project's own promises: CI runs the README's test command, the README's model
table is the registry's, and the README and docs/ link only to files that exist."""

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


# --- the documentation ------------------------------------------------------------------
# README.md keeps the quick start, the model table and links; each topic is a page of docs/.
DOC_PAGES = ("models", "exactness", "weights", "training", "dense", "deployment", "performance",
             "layout")  # fmt: skip
# [text](target) and ![alt](target), the target up to the first space or closing bracket
# (a link's optional "title" after a space is not part of it).
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+[^)]*)?\)")


def markdown_files():
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def broken_links(markdown, folder):
    """The relative link and image targets of ``markdown`` (text of a file in ``folder``)
    that name no existing file or folder; web links, mail links and pure anchors are not
    checked, and a target's ``#anchor`` or ``?query`` is cut off first."""
    broken = []
    for target in _LINK.findall(markdown):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue
        path = re.split(r"[#?]", target, maxsplit=1)[0]
        if not (folder / path).exists():
            broken.append(target)
    return broken


def test_link_checker_finds_a_broken_path(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "here.png").write_bytes(b"")
    text = (
        "[ok](../here.png) ![img](../here.png#x) [web](https://example.com/none) [a](#top) "
        "[gone](../missing.md) ![gone too](here.png) [dir](../docs/)"
    )
    assert broken_links(text, tmp_path / "docs") == ["../missing.md", "here.png"]


def test_every_relative_link_and_image_exists():
    problems = {
        str(path.relative_to(ROOT)): broken
        for path in markdown_files()
        if (broken := broken_links(path.read_text(), path.parent))
    }
    assert not problems, f"links to missing files: {problems}"


def test_readme_links_every_docs_page_and_each_page_links_back():
    readme = (ROOT / "README.md").read_text()
    pages = sorted(path.stem for path in (ROOT / "docs").glob("*.md"))
    assert pages == sorted(DOC_PAGES)
    for page in DOC_PAGES:
        assert f"](docs/{page}.md)" in readme, f"README.md does not link docs/{page}.md"
        assert "](../README.md)" in (ROOT / "docs" / f"{page}.md").read_text()


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
