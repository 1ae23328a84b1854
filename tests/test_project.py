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

    assert registry.zoo_table(baselines.FAMILIES) in (ROOT / "README.md").read_text()
