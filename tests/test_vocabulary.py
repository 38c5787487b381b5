"""The record's vocabulary is defined once (tracking/record.py): no other module writes one of its names as a
string literal. A literal of a tag, metric key, param, checkpoint file or failure kind elsewhere is a second
definition that can drift (the loader once recognised a diverged run by the text of its message)."""

from __future__ import annotations

import ast
from pathlib import Path

from tracking import record

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("lab", "sweeps", "analysis", "app", "tracking", "hydra_plugins", "benchmarks")
NAMESPACES = (record.Metric, record.Param, record.Tag, record.Role, record.Design, record.FailureKind,
              record.SweepStatus, record.Artifact, record.Checkpoint)
COMMON_WORDS = frozenset({"seed", "role", "reference", "point", "budget", "design", "sweep", "parent", "branch",
                          "grid", "cbs", "steps", "error", "isoflop", "lr_batch", "resources", "flops", "seq_len",
                          "tokens_per_param", "checkpoint_tokens", "optim.lr", "running",
                          "complete"})
"""Values that are also plain words of the code or names of config fields and frame columns (an argparse
subcommand ``cbs``, a JSON key ``design``, ``budget.flops``, ``model.seq_len``, ``optim.lr``, the CBS frame's
``checkpoint_tokens`` column): as literals they are not checked; the tags and designs they name are written through
the namespaces."""


def vocabulary() -> dict[str, str]:
    names = {}
    for ns in NAMESPACES:
        for attr, value in vars(ns).items():
            if attr.isupper() and isinstance(value, str):
                names.setdefault(value, f"{ns.__name__}.{attr}")
    return {v: n for v, n in names.items() if v not in COMMON_WORDS and v not in record.SYMBOLS}


def literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_no_vocabulary_literal_outside_the_record():
    names = vocabulary()
    found = []
    for package in CHECKED:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "tracking" / "record.py":
                continue
            found += [f"{path.relative_to(ROOT)}:{line}: {value!r} is {names[value]}"
                      for line, value in literals(path) if value in names]
    assert not found, "import these names from tracking.record:\n" + "\n".join(found)
