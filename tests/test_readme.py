"""Every ```python snippet of README.md runs, as a reader would paste it.

The README is read when the test runs (it is edited apart from the code), so a new or changed snippet is
tested without touching this file. Each snippet runs in a fresh namespace, in its own temporary working
directory; a snippet placed right after the comment ``<!-- readme: continued -->`` runs in the namespace of
the snippet before it (the README says it continues). Files a snippet names (``model.safetensors``,
``my.npz``) are created in its directory first. Nothing is skipped: a snippet that fails, fails its test,
with the README line numbers in the traceback.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```", re.S | re.M)
_CONTINUED = "<!-- readme: continued -->"


def _model_file(path: Path) -> None:
    import bastion

    bastion.save_model(bastion.load_model("zoo:mnist-cnn"), path)


def _npz_file(path: Path) -> None:
    import numpy as np

    import bastion

    d = bastion.load_dataset("mnist5k")
    np.savez(path, x=d.x_train.numpy(), y=d.y_train.numpy(), x_test=d.x_test.numpy(), y_test=d.y_test.numpy())


FILES: dict[str, Callable[[Path], None]] = {"model.safetensors": _model_file, "my.npz": _npz_file}
"""Files README snippets may name, and how to make each (a snippet's own data, as a user would have it)."""


def readme_snippets(text: str) -> list[tuple[int, str, bool]]:
    """(first line number of the code, code, continues the previous snippet) for each ```python fence."""
    out = []
    for m in _FENCE.finditer(text):
        before = text[: m.start()].rstrip()
        line = text.count("\n", 0, m.start(1)) + 1
        out.append((line, m.group(1), bool(out) and before.endswith(_CONTINUED)))
    return out


SNIPPETS = readme_snippets(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_snippets_and_they_are_all_collected():
    text = README.read_text(encoding="utf-8")
    assert SNIPPETS, "README.md has no ```python snippet"
    assert len(SNIPPETS) == text.count("```python")  # a fence the pattern misses would go untested


def test_the_snippet_reader_finds_code_lines_and_continuations():
    text = (
        "intro\n```python\na = 1\n```\n<!-- readme: continued -->\n```python\nb = a + 1\n```\n```python\nc = 3\n```\n"
    )
    assert readme_snippets(text) == [(3, "a = 1\n", False), (7, "b = a + 1\n", True), (10, "c = 3\n", False)]


_namespaces: dict[int, dict[str, Any]] = {}


@pytest.mark.parametrize(("line", "code", "continued"), SNIPPETS, ids=[f"README.md:{s[0]}" for s in SNIPPETS])
def test_readme_snippet_runs(line, code, continued, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, make in FILES.items():
        if name in code:
            make(tmp_path / name)
    index = [s[0] for s in SNIPPETS].index(line)
    if continued:
        if index - 1 not in _namespaces:
            pytest.fail(f"README.md:{line} continues the snippet before it, which did not run (run them in order)")
        namespace = _namespaces[index - 1]
    else:
        namespace = {"__name__": "__readme__"}
    # padded with blank lines so that a traceback names the README's own line numbers
    exec(compile("\n" * (line - 1) + code, str(README), "exec"), namespace)
    _namespaces[index] = namespace
