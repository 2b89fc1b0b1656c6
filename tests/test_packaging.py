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


def test_the_wheel_installs_into_a_fresh_venv_and_builds(tmp_path):
    """`pip install` of the wheel (not editable) into a new venv gives a working edgepress:
    every subpackage and data file present, `compress passes` and a build run from it. The
    dependencies come from this environment (a path entry, not reinstalled)."""
    import sysconfig
    from pathlib import Path

    from tests import builders
    from tests.conftest import save

    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"  # a copy: setuptools writes build/ into the tree it builds
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(root / name, source / name)
    for folder in ("edgepress", "compiler", "passes", "backends", "models"):
        shutil.copytree(root / folder, source / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(source)],
        check=True, timeout=600, cwd=tmp_path,
    )
    wheel = next(wheels.glob("edgepress-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
         str(wheel)],
        check=True, timeout=600, cwd=tmp_path,
    )
    code = (
        "import edgepress, edgepress.compiler, edgepress.backends.tuning.database as db\n"
        "import edgepress.backends.runtime.runtime_folder as rt, edgepress.models.corpus as corpus\n"
        f"assert edgepress.compiler.__file__.startswith({str(site)!r}), "
        "edgepress.compiler.__file__\n"
        "assert any(db.SHIPPED_DIR.glob('*/target.json')), 'shipped tuning records missing'\n"
        "assert rt.RUNNER_SOURCE.is_file() and rt.HEADER.is_file(), 'runtime sources missing'\n"
        "assert corpus.load_corpus(), 'corpus list missing'\n"
    )
    subprocess.run([str(python), "-c", code], check=True, timeout=300, cwd=tmp_path)
    compress = str(venv / "bin" / "compress")
    passes = subprocess.run([compress, "passes"], capture_output=True, text=True, cwd=tmp_path)
    assert passes.returncode == 0 and "fold_constants" in passes.stdout, passes.stderr
    model = save(builders.conv_relu(), tmp_path / "tiny.onnx")
    built = subprocess.run(
        [compress, str(model), "--target", "x86_64", "-o", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert built.stdout.strip().startswith("ok: ")
