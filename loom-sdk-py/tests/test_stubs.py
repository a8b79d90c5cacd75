"""``loom/_native.pyi`` must describe the built ``loom._native``: mypy's stubtest compares them."""

import subprocess
import sys


def test_native_stubs_match_the_built_module() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "loom._native"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, f"stubtest found differences:\n{run.stdout}\n{run.stderr}"
