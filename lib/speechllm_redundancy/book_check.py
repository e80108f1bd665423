"""Checking a rendered book as a reader's browser sees it: served on 127.0.0.1 and opened page by page in
headless Chromium, with every request to anywhere else refused and recorded.

A page passes when it loads with a title and text, shows at least as many figures as its executed notebook
has image outputs, loads at most one MathJax script, and (method page) typesets its formulas; the results
page must show a verdict for every claim. The book passes when no request left 127.0.0.1, none failed and
the server answered none with an error.
"""

from __future__ import annotations

import functools
import http.server
import json
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from speechllm_redundancy.errors import UserError
from speechllm_redundancy.results import CLAIMS as _CLAIMS

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CLAIMS = len(_CLAIMS)


def image_outputs(notebook: Path) -> int:
    """How many figures an executed notebook holds (what its page must show)."""
    nb = json.loads(Path(notebook).read_text())
    return sum(1 for cell in nb["cells"] for out in cell.get("outputs", [])
               if any(m.startswith("image/") for m in out.get("data", {})))


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


@contextmanager
def serve(directory: Path):
    """Serve ``directory`` on 127.0.0.1:<free port>; yields (base url, log of (path, status))."""
    log: list[tuple[str, int]] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_request(self, code="-", size="-"):
            log.append((self.path, int(code) if str(code).isdigit() else 0))

        def log_message(self, *args):  # quiet
            pass

    server = _Server(("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()


def check_rendered(html: Path, executed: dict[str, Path], chromium: Path = CHROMIUM) -> dict[str, list]:
    """Open every page of the HTML book in ``html`` in headless Chromium; ``executed`` maps a chapter stem
    to its executed notebook (to count the figures its page must show). Returns the problems found, by
    kind (every list empty: the book passed); raises UserError when the browser itself is missing."""
    if not chromium.exists():
        raise UserError(f"{chromium} not found: install Debian's chromium (`apt-get install chromium`, or "
                        "`make setup`) to check the rendered book.")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise UserError("playwright (Python) is not installed: it is in requirements.lock; run `make setup`") from None
    html = Path(html)
    pages = sorted(p.relative_to(html).as_posix() for p in html.rglob("*.html") if "_static" not in p.parts)
    problems: dict[str, list] = {"pages": [], "requests to outside 127.0.0.1": [], "failed requests": [],
                                 "HTTP errors": [], "served with an error": []}

    def route(r):
        url = urlparse(r.request.url)
        if url.scheme in ("http", "https", "ws", "wss") and url.hostname != "127.0.0.1":
            problems["requests to outside 127.0.0.1"].append(r.request.url)
            return r.abort()
        return r.continue_()

    with serve(html) as (base, server_log), sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        context = pw.chromium.launch_persistent_context(profile, executable_path=str(chromium), headless=True,
                                                        args=CHROMIUM_ARGS)
        try:
            context.route("**/*", route)
            page = context.new_page()
            page.on("requestfailed", lambda r: problems["failed requests"].append(f"{r.url} ({r.failure})"))
            page.on("response", lambda r: r.status >= 400 and problems["HTTP errors"].append(f"{r.url} {r.status}"))
            for rel in pages:
                page.goto(f"{base}/{rel}", wait_until="networkidle")
                problems["pages"] += [f"{rel}: {p}" for p in _page_problems(page, rel, executed)]
        finally:
            context.close()
        problems["served with an error"] = [entry for entry in server_log if entry[1] >= 400]
        if len(server_log) <= len(pages):
            problems["pages"].append(f"only {len(server_log)} requests for {len(pages)} pages: assets not loaded")
    return problems


def _page_problems(page, rel: str, executed: dict[str, Path]) -> list[str]:
    found = []
    if not page.title().strip():
        found.append("no title")
    if len(page.locator("body").inner_text().strip()) <= 100:
        found.append("empty body")
    stem = Path(rel).stem
    if rel.startswith("notebooks/") and stem in executed:
        want = image_outputs(executed[stem])
        imgs = page.locator("article img, main img")
        shown = sum(imgs.nth(i).evaluate("i => i.complete && i.naturalWidth > 0") for i in range(imgs.count()))
        if shown < want:
            found.append(f"{shown} figures shown, the notebook has {want}")
    scripts = page.locator("script[src]").evaluate_all("s => s.map(e => e.src)")
    if len([u for u in scripts if "/mathjax/" in u]) > 1:
        found.append("MathJax parts loaded as scripts")
    if rel == "book/method.html":  # MathJax (served locally) typeset the formulas
        try:
            page.wait_for_selector("mjx-container", timeout=15000)
        except Exception:  # playwright's TimeoutError
            pass
        if page.locator("mjx-container").count() < 5:
            found.append("formulas not typeset by MathJax")
    if rel == "book/results.html":  # every claim's verdict, rendered from results.json
        rows = page.locator("table").first.locator("tbody tr")
        verdicts = [rows.nth(i).locator("td").last.inner_text().strip() for i in range(rows.count())]
        if len(verdicts) != CLAIMS or not all(verdicts):
            found.append(f"claims table shows {verdicts}, want {CLAIMS} verdicts")
    return found


def verify(html: Path, executed: dict[str, Path]) -> None:
    """``check_rendered`` for people: prints what was checked, raises UserError listing every problem."""
    problems = check_rendered(html, executed)
    bad = {kind: items for kind, items in problems.items() if items}
    if bad:
        listing = "; ".join(f"{kind}: {items[:5]}" for kind, items in bad.items())
        raise UserError(f"the rendered book in {html} failed the browser check: {listing}")
    pages = sum(1 for p in Path(html).rglob("*.html") if "_static" not in p.parts)
    print(f"browser check: {pages} pages load in headless Chromium, figures shown, nothing fetched from outside",
          flush=True)
