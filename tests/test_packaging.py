"""The distribution installs its four code folders as edgepress.* and adds no generic names."""

from __future__ import annotations

import shutil
import subprocess
import sys


def test_subpackages_import_under_edgepress_and_no_generic_names(tmp_path):
    """From outside the repository (so its folders are not on sys.path through the cwd), the
    installed distribution provides edgepress.* and none of compiler, passes, backends, models."""
    code = (
        "import importlib, importlib.util\n"
        "for name in ('compiler', 'passes', 'backends', 'models'):\n"
        "    assert importlib.util.find_spec(name) is None, name + ' is importable at top level'\n"
        "    module = importlib.import_module('edgepress.' + name)\n"
        "    assert module.__file__.replace('\\\\', '/').rsplit('/', 2)[-2] == name\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300, cwd=tmp_path)


def test_console_script_runs():
    exe = shutil.which("compress") or str(
        __import__("pathlib").Path(sys.executable).with_name("compress")
    )
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("edgepress ")


def test_compressing_does_not_import_torch():
    code = (
        "import sys, edgepress.compiler.build, edgepress.compiler.cli; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
