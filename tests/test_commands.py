"""ubnas_commands: one way in. Every console script and every file under tools/ and
benchmarks/ goes through it, and only it quiets TensorFlow (a library import does not)."""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tool_runs import REPO

import ubnas_commands

SCRIPTS = dict(re.findall(r'^(ubnas-[\w-]+) = "ubnas_commands:(\w+)"',
                          (REPO / "pyproject.toml").read_text(), re.M))


def test_every_console_script_is_a_command_whose_module_runs():
    declared = re.findall(r"^(ubnas-[\w-]+) = ", (REPO / "pyproject.toml").read_text(), re.M)
    assert declared and sorted(declared) == sorted(SCRIPTS), "a script not via ubnas_commands"
    assert sorted(SCRIPTS.values()) == sorted(ubnas_commands.COMMANDS)
    for command, module in ubnas_commands.COMMANDS.items():
        assert callable(getattr(ubnas_commands, command)), command
        # Each module defines its flags at import: read it rather than import them all here.
        origin = REPO / (module.replace(".", "/") + ".py")
        defined = {n.name for n in ast.parse(origin.read_text()).body
                   if isinstance(n, ast.FunctionDef)}
        assert "run" in defined, module


@pytest.mark.parametrize("path", sorted(p.relative_to(REPO).as_posix() for p in
                                        [*REPO.glob("tools/*.py"), *REPO.glob("benchmarks/*.py")]))
def test_each_file_in_tools_and_benchmarks_is_a_shim_over_a_command(path):
    tree = ast.parse((REPO / path).read_text())
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert len(imports) == 1 and isinstance(imports[0], ast.ImportFrom), path
    assert imports[0].module == "ubnas_commands", path
    assert imports[0].names[0].name in SCRIPTS.values(), path
    if path.startswith("tools/"):  # a tool's command is named as its file
        assert imports[0].names[0].name == Path(path).stem, path


def test_importing_the_library_keeps_tensorflows_log_level():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    code = "import os, ubnas_tf; print(repr(os.environ.get('TF_CPP_MIN_LOG_LEVEL')))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "None"


def test_a_command_quiets_tensorflow_unless_the_user_chose_a_level(monkeypatch):
    ran = []
    monkeypatch.setattr(importlib, "import_module",
                        lambda name: type("M", (), {"run": staticmethod(lambda: ran.append(name))}))
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    ubnas_commands.search()
    assert ran == ["ubnas_tf.cli.search"] and os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    ubnas_commands.train()
    assert ran[-1] == "ubnas_tf.cli.train" and os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
