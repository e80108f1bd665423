"""The command line: the installed console script is `cli.main` (what `python -m speechllm_redundancy` runs),
the package states the Python its locked dependencies need, and every option of every command (and of every
benchmark script) has help."""

import argparse
import importlib
import importlib.metadata
import platform
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from benchmark_scripts import load_benchmark
from speechllm_redundancy import cli

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_console_script_is_the_cli_that_python_m_runs(tmp_path):
    assert PROJECT["scripts"] == {"speechllm-redundancy": "speechllm_redundancy.cli:main"}
    (entry,) = importlib.metadata.entry_points(group="console_scripts", name="speechllm-redundancy")
    assert entry.load() is cli.main is importlib.import_module("speechllm_redundancy.__main__").main
    # the installed script itself: a user error becomes exit status 2 and a message naming the fix
    script = Path(sys.executable).parent / "speechllm-redundancy"
    run = subprocess.run([str(script), "slam", "evaluate", "--model", str(tmp_path), "--manifest", "m.jsonl"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "holds no trained SLAM model" in run.stderr and "slam train" in run.stderr


def test_requires_python_is_what_the_locked_packages_need():
    """Its floor admits every package pinned in requirements.lock (as installed here), and one of them
    refuses the release just below it, so the floor is no lower and no higher than needed."""
    spec = SpecifierSet(PROJECT["requires-python"])
    (floor,) = [Version(s.version) for s in spec if s.operator == ">="]
    below = (Version(f"{floor.major}.{floor.minor}.{floor.micro - 1}") if floor.micro
             else Version(f"{floor.major}.{floor.minor - 1}.99"))
    assert platform.python_version() in spec
    needs = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        name, _, version = line.partition(";")[0].strip().partition("==")
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if dist.version == version and dist.metadata["Requires-Python"]:
            needs[name] = SpecifierSet(dist.metadata["Requires-Python"])
    assert len(needs) > 50  # the lock was read
    assert not {name: str(s) for name, s in needs.items() if floor not in s}
    assert any(below not in s for s in needs.values())


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser, its sub-command action or None) for the parser and every sub-command's."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    yield path, parser, subs[0] if subs else None
    for action in subs:
        for name, sub in action.choices.items():
            yield from commands(sub, (*path, name))


def test_every_command_and_option_has_help():
    missing, seen = [], set()
    for path, parser, sub in commands(cli.build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            name = "/".join(action.option_strings) or action.dest
            seen.add(f"{' '.join(path)} {name}")
            if not (action.help or "").strip():
                missing.append(f"{' '.join(path)} {name}")
        for choice in sub._choices_actions if sub else ():
            if not (choice.help or "").strip():
                missing.append(f"{' '.join(path)} {choice.dest} (the command)")
    assert {"slam train --steps", "slam train --lora-r", "corpus validate manifest", "angles --batch-size"} <= seen
    assert not missing


def test_every_benchmark_flag_has_help():
    """Each benchmarks/*.py that parses a command line builds its parser in ``build_parser()`` (so a new
    benchmark cannot slip past this test), and every one of its options has help."""
    names = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if "argparse" in p.read_text())
    without, missing, seen = [], [], set()
    for name in names:
        module = load_benchmark(name)
        if not callable(getattr(module, "build_parser", None)):
            without.append(name)
            continue
        parser = module.build_parser()
        assert isinstance(parser, argparse.ArgumentParser)
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flag = f"{name} {'/'.join(action.option_strings) or action.dest}"
            seen.add(flag)
            if not (action.help or "").strip():
                missing.append(flag)
    assert not without, f"benchmarks without build_parser(): {without}"
    assert {"bench_angles --device", "bench_decoding --max-new-tokens", "healing_drift --tiny",
            "slam_training --ctc-steps", "voice_intelligibility --by", "whisper_window --n"} <= seen
    assert not missing
