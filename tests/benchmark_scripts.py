"""Loading a script of benchmarks/ as a module, so its tests call its functions without a subprocess."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def script_path(name: str) -> Path:
    return ROOT / "benchmarks" / f"{name}.py"


def load_benchmark(name: str):
    """benchmarks/<name>.py, imported under ``name``."""
    spec = importlib.util.spec_from_file_location(name, script_path(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
