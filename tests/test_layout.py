"""The layout's import rules hold (tests/import_rules.py), and they can fail."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.import_rules import PACKAGES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_rules(root: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.import_rules", root], cwd=root, capture_output=True,
                          text=True, timeout=120)


def copy_tree(dst: str) -> None:
    for pkg in PACKAGES + ("tests",):
        shutil.copytree(os.path.join(ROOT, pkg), os.path.join(dst, pkg),
                        ignore=shutil.ignore_patterns("__pycache__", "test_*.py"))


def test_tree_keeps_the_import_rules():
    r = run_rules(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize("module,line,expect", [
    ("walreceiver/walreceiver.py", "import startup.standby", "forbidden import: walreceiver.walreceiver imports "
                                                             "startup.standby"),
    ("xlog/lsn.py", "from walswitch import status", "forbidden import: xlog.lsn imports walswitch.status"),
    ("postmaster/pidfile.py", "import startup.policy", "forbidden import: postmaster.pidfile imports startup.policy"),
    ("xlog/lsn.py", "from xlog import reader", "import cycle among: "),
])
def test_a_planted_violation_fails(tmp_path, module, line, expect):
    copy_tree(str(tmp_path))
    path = tmp_path / module
    text = path.read_text()
    # after the module docstring and the __future__ import, where an ordinary import would stand
    anchor = "from __future__ import annotations\n"
    assert anchor in text
    path.write_text(text.replace(anchor, anchor + line + "\n", 1))
    r = run_rules(str(tmp_path))
    assert r.returncode == 1, r.stdout + r.stderr
    assert expect in r.stdout
    if "cycle" in expect:
        assert "xlog.lsn" in r.stdout and "xlog.reader" in r.stdout


def test_readme_names_every_folder_and_its_process():
    text = open(os.path.join(ROOT, "README.md")).read()
    for pkg in PACKAGES:
        assert f"`{pkg}/`" in text, pkg
