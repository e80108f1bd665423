"""`python -m speechllm_redundancy book run | render | verify | check | params --profile P`: a profile's
parameters → executed chapters (chapter_runs.py) → a rendered, offline HTML book (rendering.py)."""

from __future__ import annotations

import yaml

from speechllm_redundancy.chapter_runs import run_chapters
from speechllm_redundancy.profiles import chapter_stems, load_profile, select_chapters, validate_profile
from speechllm_redundancy.rendering import render, verify_rendered


def register(subparsers) -> None:
    book = subparsers.add_parser("book", help="run the chapters (papermill), render the book (Jupyter Book)")
    sub = book.add_subparsers(dest="book_command", required=True)

    def with_profile(parser):
        parser.add_argument("--profile", required=True, help="profile name (smoke, default, paper) or yaml")
        return parser

    run = with_profile(sub.add_parser("run", help="execute the chapters into artifacts/executed/<profile>/"))
    run.add_argument("--chapter", action="append", help="only this chapter (stem or prefix: 01); repeatable")
    run.add_argument("--force", action="store_true", help="re-run chapters that are already up to date")
    run.set_defaults(func=_run)

    render_cmd = with_profile(sub.add_parser("render", help="build the HTML into artifacts/book/<profile>/"))
    render_cmd.set_defaults(func=_render)

    verify_cmd = with_profile(sub.add_parser("verify", help="open every rendered page in headless Chromium, "
                                                         "offline: figures shown, nothing fetched from outside"))
    verify_cmd.set_defaults(func=_verify)

    check = with_profile(sub.add_parser("check", help="check a profile against the notebooks; runs nothing"))
    check.set_defaults(func=_check)

    params = with_profile(sub.add_parser("params", help="a chapter's parameters as YAML (papermill -f)"))
    params.add_argument("--chapter", required=True, help="chapter stem or prefix such as 01")
    params.set_defaults(func=_params)


def _run(args) -> int:
    run_chapters(load_profile(args.profile), args.chapter, args.force)
    return 0


def _render(args) -> int:
    render(load_profile(args.profile))
    return 0


def _verify(args) -> int:
    verify_rendered(load_profile(args.profile))
    return 0


def _check(args) -> int:
    profile = load_profile(args.profile)
    validate_profile(profile)
    print(f"profile {profile.name} ({profile.path}) fits all {len(chapter_stems())} chapters")
    return 0


def _params(args) -> int:
    profile = load_profile(args.profile)
    (stem,) = select_chapters([args.chapter])
    print(yaml.safe_dump(profile.parameters(stem), sort_keys=False), end="")
    return 0
