"""Chapter 2, healing dynamics: one SLAM model pruned progressively along its speech-derived and its
text-derived path, healed with each strategy (none, decoder, projector, both), scored on every evaluation
set (claim 4).

    walks = healing_dynamics.measure(study, "smollm2-135m", [0.1, 0.2], text_path_strategies=["none"])
    walks.delta_figure(); walks.strategies().table; walks.claim_4()
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import pandas as pd

from speechllm_redundancy import plots, sweep, verdicts
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.experiments import SlamRun, Study
from speechllm_redundancy.healing import STRATEGIES
from speechllm_redundancy.report import Finding

SPEECH, TEXT = "speech-derived", "text-derived"
MEAN, WORST = "mean relative WER change", "worst relative WER change"


@dataclass
class HealingWalks:
    """The walks of chapter 2: a long frame (``Study.walk``'s columns plus ``path``) of every strategy along
    the speech-derived path and of ``text_path_strategies`` along the text-derived one."""

    study: Study
    run: SlamRun
    fractions: list[float] | None
    text_path_strategies: list[str]
    paths: dict[str, dict[int, int]]
    walks: pd.DataFrame

    @property
    def parameters(self) -> dict[str, Any]:
        return dict(speech_llm=self.run.llm, pruned_fractions=self.fractions,
                    text_path_strategies=self.text_path_strategies)

    def paths_table(self) -> Finding:
        """The first layer ℓ*(n) of the block each path removes, per block size n walked."""
        sizes = sorted(set(self.walks.n) - {0})
        table = pd.DataFrame({name: [path[n] for n in sizes] for name, path in self.paths.items()},
                             index=pd.Index(sizes, name="block size n")).T.rename_axis("path")
        return Finding(table, {"layers": self.run.num_layers})

    def delta_figure(self):
        """The relative WER change on each set against the fraction removed, one panel per path."""
        return plots.delta_panels({f"{self.run.llm}: {name} path": self.walks[self.walks.path == name]
                                   for name in self.paths}, hue="strategy")

    @cached_property
    def _by_strategy(self) -> pd.DataFrame:
        rows = []
        for (path, strategy), walk in self.walks.groupby(["path", "strategy"], sort=False):
            pruned = walk[walk.n > 0].delta
            rows.append({"path": path, "strategy": strategy,
                         "removable fraction": self.study.removable(walk, self.run),
                         MEAN: float(pruned.mean()), WORST: float(pruned.max())})
        return pd.DataFrame(rows).set_index(["path", "strategy"])

    def strategies(self) -> Finding:
        """Per path and strategy: the removable fraction, and the relative WER change averaged over (and at
        worst among) the pruned levels and sets."""
        speech = self._by_strategy.loc[SPEECH]
        numbers = {f"removable_{s}": speech.loc[s, "removable fraction"] for s in STRATEGIES}
        numbers |= {f"mean_delta_{s}": speech.loc[s, MEAN] for s in STRATEGIES}
        table = self._by_strategy.style.format({"removable fraction": "{:.1%}", MEAN: "{:+.1%}",
                                                WORST: "{:+.1%}"})
        return Finding(table, numbers | {"worst_none": speech.loc["none", WORST]})

    def path_gaps(self) -> Finding:
        """Per strategy walked on both paths and level: the largest difference of the relative WER change
        between the paths over the sets (0 where both remove the same block)."""
        both = self.walks.pivot_table(index=["strategy", "n", "set"], columns="path", values="delta")
        both = both.dropna().query("n > 0")
        gap = (both[SPEECH] - both[TEXT]).abs().groupby(level=["strategy", "n"]).max()
        layers = self.run.num_layers
        table = gap.unstack("n").rename(columns=lambda n: f"{n}/{layers} layers removed")
        table = table.rename_axis(columns=None).style.format("{:.1%}").set_caption(
            "largest |ΔWER(speech path) − ΔWER(text path)| over the sets")
        return Finding(table, {"largest_path_gap": float(gap.max()) if len(gap) else float("nan")})

    def claim_4(self) -> verdicts.ClaimVerdict:
        """The paper's ranking of the strategies along the speech-derived path, on the levels where some
        healed model still works (``sweep.working_levels``): where every one is broken, their relative
        changes rank noise."""
        speech = self.walks[self.walks.path == SPEECH]
        bad = self.study.unusable(speech)
        working = sweep.working_levels(speech, self.study.chance())
        kept = speech[speech.n.isin(working)]
        layers = self.run.num_layers
        left_out = [f"{n}/{layers} layers" for n in sorted(set(speech.n) - {0} - set(working))]
        means = {s: float(kept[kept.strategy == s].delta.mean()) for s in STRATEGIES} if working else {}
        worst = float(kept[kept.strategy == "none"].delta.max()) if working else float("nan")
        return verdicts.claim_4(means, worst, [verdicts.AtChance(self.run.llm, bad)] if bad else [],
                                variant=f"{self.run.llm} frozen decoder, speech-derived path, "
                                        f"{self.study.settings.healing_steps} healing steps",
                                recipe=self.study.settings.recipe, left_out=left_out)


def measure(study: Study, llm: str, fractions: list[float] | None,
            text_path_strategies: list[str] = STRATEGIES) -> HealingWalks:
    """The frozen-decoder SLAM model of ``llm`` pruned at ``fractions`` (None: every n up to half) along its
    speech-derived path (from its own speech inputs) with every healing strategy, and along the
    text-derived path (from the decoder alone fed the same utterances' transcripts) with
    ``text_path_strategies``; points the paths share are computed once, and the unpruned scores go to the
    results file."""
    unknown = sorted(set(text_path_strategies) - set(STRATEGIES))
    if unknown:
        raise UserError(f"text_path_strategies {unknown} unknown: use some of {', '.join(STRATEGIES)}.")
    run = study.slam(llm)
    paths = {SPEECH: study.speech_path(run), TEXT: study.text_angles(llm).optimal_path()}
    walks = pd.concat([study.walk(run, path, fractions, strategy=strategy).assign(path=name)
                       for name, path in paths.items()
                       for strategy in (STRATEGIES if name == SPEECH else text_path_strategies)],
                      ignore_index=True)
    study.record_baseline(run, walks[walks.path == SPEECH])
    return HealingWalks(study, run, fractions, list(text_path_strategies), paths, walks)
