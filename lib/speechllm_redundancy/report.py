"""What a chapter publishes from inside its notebook: the numbers its prose quotes, the settings it ran with
and its verdicts on the paper's claims, shown on the page (glued) and, for the settings and verdicts,
recorded in the results file (results.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from speechllm_redundancy import results
from speechllm_redundancy.verdicts import ClaimVerdict


class PlainText(str):
    """A str whose repr is itself, so `{glue:text}` pastes it into a page without quotes."""

    def __repr__(self) -> str:
        return str(self)


@dataclass(frozen=True)
class Finding:
    """One section of a chapter: the table it shows (None: it shows none) and the numbers its prose quotes
    (``glue_finding`` glues them)."""

    table: Any = None
    numbers: Mapping[str, Any] = field(default_factory=dict)


def glue_finding(prefix: str, finding: Finding):
    """Glue each of ``finding``'s numbers as `<prefix>_<name>` (for `{glue:text}` in the prose) and return
    its table, so a cell ending in this call shows it."""
    from myst_nb import glue

    for name, value in finding.numbers.items():
        glue(f"{prefix}_{name}", _gluable(value), display=False)
    return finding.table


def _gluable(value: Any):
    """Numbers as Python numbers (a numpy scalar's repr names its type), text without quotes."""
    if isinstance(value, str):
        return PlainText(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    return float(value)


def settings_table(settings: Mapping[str, Any]):
    """The "This run" table each chapter ends with: every setting it ran with, values as text (and, under
    `book run`, in the results file)."""
    import pandas as pd

    results.record_settings(settings)
    table = pd.Series({name: str(value) for name, value in settings.items()}, name="value").to_frame()
    return table.rename_axis("parameter")


def glue_verdict(verdict: ClaimVerdict) -> None:
    """Publish a chapter's verdict on one of the paper's claims (``verdicts.ClaimVerdict``). It reads
    "<status> on this run (<variant>, <recipe> recipe): <finding>", goes to the results file (the results
    page shows its status and summary from there) and is glued as `claim_<n>`."""
    from myst_nb import glue

    glue(f"claim_{verdict.claim}", PlainText(results.record_claim(verdict)), display=False)
