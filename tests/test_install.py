"""What installing refnorm leaves behind: its compiled cache never lands inside the package (files
pip does not know of outlive `pip uninstall`, and the empty site-packages/refnorm/ they leave
shadows a later editable install), and the installed `refnorm` works from any folder."""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from numba.core.registry import CPUDispatcher

import refnorm.numba_cpu
from refnorm.numba_cpu import common, refnorm_cache_dir

PACKAGE = pathlib.Path(refnorm.__file__).resolve().parent


def _compiled_files():
    return {(p.name, p.stat().st_mtime_ns) for p in PACKAGE.rglob("*.nb[ic]")}


def test_every_cached_loop_caches_outside_the_package():
    """Each dispatcher of refnorm.numba_cpu chose its cache folder at import: outside the
    package (in refnorm_cache_dir(), unless the user set NUMBA_CACHE_DIR)."""
    dispatchers = [obj for module in vars(refnorm.numba_cpu).values()
                   if getattr(module, "__name__", "").startswith("refnorm.numba_cpu.")
                   for obj in vars(module).values() if isinstance(obj, CPUDispatcher)]
    assert len(dispatchers) >= 20
    for d in dispatchers:
        path = pathlib.Path(d._cache._cache_path).resolve()
        assert PACKAGE not in path.parents, (d.py_func.__qualname__, path)
    assert common.JIT["cache"] is True


def test_compiling_writes_nothing_into_the_package(tmp_path):
    """A fresh process with an empty cache compiles the LSTM's loops and the gate functions
    they inline (Numba makes those overloads' dispatchers lazily, after import): every file
    goes to the user's cache folder, none into the package."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    before = _compiled_files()
    code = ("import numpy as np, refnorm\n"
            "from refnorm.numba_cpu import refnorm_cache_dir\n"
            "for dt in ('float64', 'float32'):\n"
            "    cell = refnorm.LSTM(3, 4, seed=0, backend='numba', dtype=dt)\n"
            "    hs, _, cache = cell.forward(np.ones((3, 2, 3), dt))\n"
            "    cell.backward(hs, cache)\n"
            "print(refnorm_cache_dir())\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert pathlib.Path(out).parent == tmp_path / "refnorm" / "numba"
    assert list(pathlib.Path(out).rglob("*.nbi"))
    assert _compiled_files() == before


def test_refnorm_works_from_another_folder(tmp_path):
    """After the README's second command (an editable install), `import refnorm` and the
    `refnorm` command work outside the source tree. Skipped where refnorm is not installed
    (a checkout put on PYTHONPATH), never in CI."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run([sys.executable, "-c", "import refnorm; print(refnorm.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True)
    if "No module named 'refnorm'" in probe.stderr and not os.environ.get("CI"):
        pytest.skip("refnorm is not installed in this environment (pip install -e '.[test]')")
    assert probe.returncode == 0, probe.stderr
    assert "CELLS" not in probe.stderr
    command = shutil.which("refnorm", path=str(pathlib.Path(sys.executable).parent))
    if command is None and not os.environ.get("CI"):
        pytest.skip("the refnorm command is not installed beside this Python")
    helped = subprocess.run([command, "--help"], cwd=tmp_path, env=env, capture_output=True,
                            text=True)
    assert helped.returncode == 0 and "refnorm check" in helped.stdout, helped.stderr


def test_the_cache_folder_changes_with_any_source_file(tmp_path):
    """Numba revalidates a cached function against its own file only; the folder refnorm
    caches in is keyed to every file of the package, so an edit of one helper module (norms.py)
    recompiles the loops that inline it."""
    from refnorm.numba_cpu import source_key
    (tmp_path / "norms.py").write_text("EPS = 1e-5\n")
    (tmp_path / "bn_lstm.py").write_text("from .norms import EPS\n")
    (tmp_path / "notes.txt").write_text("not source")
    before = source_key(tmp_path)
    (tmp_path / "notes.txt").write_text("still not source")
    assert source_key(tmp_path) == before
    (tmp_path / "norms.py").write_text("EPS = 0.0\n")
    assert source_key(tmp_path) != before
    assert pathlib.Path(refnorm_cache_dir()).name == source_key(PACKAGE / "numba_cpu")
