"""A built wheel holds every source directory of the three packages and the shipped DeepSpeed
configs (an editable install hides a missing one: `shards/pipelines` was left out of wheels, and
`ds_configs/` was read from the repository root). The wheel is built from a copy of the sources
with setuptools' own build backend, offline."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOP = ("dataprep", "shards", "trainer", "ds_configs")


def source_files() -> set[str]:
    return {p.relative_to(REPO).as_posix() for top in TOP for p in (REPO / top).rglob("*")
            if p.suffix in (".py", ".json") and "__pycache__" not in p.parts}


def build_wheel(tmp: Path, pyproject: str) -> set[str]:
    src = tmp / "src"
    src.mkdir()
    (src / "pyproject.toml").write_text(pyproject)
    shutil.copy(REPO / "README.md", src / "README.md")
    for top in TOP:
        shutil.copytree(REPO / top, src / top, ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                          "print(build_meta.build_wheel(sys.argv[1]))", str(tmp / "dist")],
                         cwd=src, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    wheel = tmp / "dist" / out.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as z:
        return {n for n in z.namelist() if n.endswith((".py", ".json"))}


def test_wheel_contains_every_package_directory(tmp_path):
    pyproject = (REPO / "pyproject.toml").read_text()
    in_wheel = build_wheel(tmp_path, pyproject)
    missing = sorted(source_files() - in_wheel)
    assert not missing, f"left out of the wheel: {missing}"
    assert "shards/pipelines/pretrain.py" in in_wheel and "ds_configs/pretrain_vitb_4096.json" in in_wheel


def test_the_check_catches_a_left_out_subpackage(tmp_path):
    """The old explicit list (top-level packages only) loses the subpackages (shards/pipelines,
    dataprep/synthetic, trainer/engine): the check above must see that."""
    pyproject = (REPO / "pyproject.toml").read_text()
    lines = [line for line in pyproject.splitlines() if line.startswith("packages = ")]
    assert len(lines) == 1
    old = pyproject.replace(lines[0], 'packages = ["dataprep", "shards", "trainer"]')
    missing = source_files() - build_wheel(tmp_path, old)
    assert {"shards/pipelines/pretrain.py", "dataprep/synthetic/hands.py", "trainer/engine/loop.py"} <= missing
    assert all(m.count("/") >= 2 or m.startswith("ds_configs/") for m in missing)  # subpackages, configs
