"""The source tree keeps its layout: no import circle between files, no import from a lower layer of the data flow
to a higher one, no source file over 700 lines (scripts/check_layout.py), and the checker itself catches both
kinds of import it forbids."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def check(root):
    return subprocess.run([sys.executable, str(root / "scripts" / "check_layout.py")], capture_output=True,
                          text=True)


def test_the_layout_has_no_circle_no_upward_import_and_no_long_file():
    r = check(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 problems" in r.stdout


def test_the_checker_finds_an_upward_import_and_a_circle(tmp_path):
    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "src", copy / "src")
    shutil.copytree(ROOT / "scripts", copy / "scripts")
    with open(copy / "src" / "volume.rs", "a") as f:
        f.write("\nuse crate::live::LiveStats;\n")
    with open(copy / "src" / "generate" / "cpu" / "ops.rs", "a") as f:
        f.write("\nuse crate::generate::cpu::CpuGenerator;\n")
    r = check(copy)
    assert r.returncode == 1
    assert "volume imports live, a higher layer" in r.stdout
    assert "import circle:" in r.stdout and "generate/cpu/ops -> generate/cpu" in r.stdout
