"""The house's floors: no package imports one above it (data < models < checkpoints <
inference < evaluation < training < entry points), and decoding runs without Lightning or
DeepSpeed."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import REPO

# the floor of each part of mooer/, from the ground up; config, devices and files are the ground
FLOORS = {"config": 0, "devices": 0, "files": 0, "data": 1, "models": 2, "checkpoints": 3,
          "inference": 4, "evaluation": 5, "training": 6, "demo": 7}


def floor(module: str) -> int:
    """The floor of a `mooer.<part>...` module name."""
    return FLOORS[module.split(".")[1]]


def imports_of(path) -> list[tuple[int, str]]:
    """(line, module) of every `mooer` import in a file, at the top or inside a function."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = ([node.module] if node.module != "mooer"
                     else [f"mooer.{alias.name}" for alias in node.names])
            found += [(node.lineno, name) for name in names if name.startswith("mooer.")]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("mooer.")]
    return found


def test_no_package_imports_one_above_it():
    sources = sorted((REPO / "mooer").rglob("*.py"))
    assert {p.relative_to(REPO / "mooer").parts[0].removesuffix(".py") for p in sources} \
        - {"__init__"} == set(FLOORS)  # every part of the house has its floor
    upward = []
    for path in sources:
        module = "mooer." + ".".join(path.relative_to(REPO / "mooer").with_suffix("").parts)
        if module == "mooer.__init__":
            continue
        for line, imported in imports_of(path):
            if floor(imported) > floor(module):
                upward.append(f"{path.relative_to(REPO)}:{line} imports {imported}")
    assert upward == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The walk finds imports inside functions too (a check that cannot fail proves nothing)."""
    source = tmp_path / "example.py"
    source.write_text("import os\n\ndef late():\n    from mooer.training.module import X\n"
                      "    import mooer.inference.decode\n")
    found = imports_of(source)
    assert found == [(4, "mooer.training.module"), (5, "mooer.inference.decode")]
    assert floor("mooer.training.module") > floor("mooer.data.loader")


def test_decoding_imports_neither_lightning_nor_deepspeed():
    code = ("import sys\n"
            "import mooer.inference.transcribe, mooer.inference.serve, mooer.evaluation.run\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('lightning', 'pytorch_lightning', 'deepspeed')))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
    # and the check can fail: training does import Lightning
    code = code.replace("mooer.inference.transcribe, mooer.inference.serve, mooer.evaluation.run",
                        "mooer.training.module")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert "lightning" in result.stdout
