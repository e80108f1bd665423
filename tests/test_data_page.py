"""The data page's model table states each packaged model's format, quantisation, source packages and
licence exactly as the zoo's registry has them (the page is plain Markdown, so this test keeps them one)."""

from pathlib import Path

import pytest

from speechllm_redundancy.zoo.registry import MODELS, PackagedModel

PAGE = Path(__file__).resolve().parents[1] / "book" / "data.md"
HEADER = "| zoo name | model | format | quantisation | PyPI package(s) | licence |"
FORMATS = {"gguf": "GGUF", "ct2-whisper": "CTranslate2"}
PACKAGED = [m for m in MODELS.values() if isinstance(m, PackagedModel)]


def table_rows() -> dict[str, list[str]]:
    """{zoo name: cells} of the model table (the rows after HEADER up to the first non-table line)."""
    lines = PAGE.read_text(encoding="utf-8").splitlines()
    assert HEADER in lines, f"{PAGE} has no model table headed {HEADER}"
    rows = {}
    for line in lines[lines.index(HEADER) + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1:]
    return rows


def packages_cell(wheels: tuple[str, ...]) -> str:
    quoted = [f"`{w}`" for w in wheels]
    return ", ".join(quoted) if len(quoted) <= 2 else f"{quoted[0]} … {quoted[-1]} ({len(quoted)} wheels)"


def test_the_table_lists_exactly_the_packaged_models():
    assert sorted(table_rows()) == sorted(m.name for m in PACKAGED)


@pytest.mark.parametrize("model", PACKAGED, ids=lambda m: m.name)
def test_each_row_matches_the_registry(model):
    _, fmt, quantisation, packages, licence = table_rows()[model.name]
    assert (fmt, quantisation, licence) == (FORMATS[model.format], model.quantisation, model.license)
    assert packages == packages_cell(model.wheels)
    if len(model.wheels) > 2:  # "first … last (N wheels)" stands for <package>1 … <package>N of one version
        package, version = model.wheels[0].split("==")
        expected = [f"{package[:-1]}{i}=={version}" for i in range(1, len(model.wheels) + 1)]
        assert list(model.wheels) == expected
