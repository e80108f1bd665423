"""Chapter 4, transfer to speech translation: each translation (AST) model pruned along its own path and
along the path of the recognition (ASR) model of the same decoder, BLEU per level in the layout of the
paper's Table 2 (claim 6).

    transfer = translation.measure(study, ["smollm2-135m"], ["en-de", "fr-en"], ast_encoder="whisper-base",
                                   fractions=[0.1, 0.2], healing=["none", "both"])
    transfer.table_2(); transfer.summary().table; transfer.claim_6()
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import pandas as pd

from speechllm_redundancy import angles, plots, verdicts
from speechllm_redundancy.angles import AngleMatrix
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.evaluation import AST_THRESHOLD
from speechllm_redundancy.experiments import SlamRun, Study
from speechllm_redundancy.healing import STRATEGIES, check_strategy
from speechllm_redundancy.report import Finding

AST_PATH, ASR_PATH = "AST-derived", "ASR-derived"


def _bleu_cell(row) -> str:
    """A walk point as a table cell: BLEU, with its relative change where pruned."""
    return f"{row.score:.2f}" + (f" ({row.delta:+.1%})" if row.n else "")


@dataclass
class Transfer:
    """Chapter 4's walks: ``everything`` (``Study.walk``'s columns plus model, direction, path and layers) for
    every strategy along the AST-derived path and the last strategy along the ASR-derived one; ``starts``,
    the block each path removes; ``matrices``, the (AST, ASR) maps of each (decoder, direction)."""

    study: Study
    speech_llms: list[str]
    directions: list[str]
    ast_encoder: Any
    fractions: list[float] | None
    strategies: list[str]
    runs: dict[tuple[str, str], SlamRun]
    matrices: dict[tuple[str, str], tuple[AngleMatrix, AngleMatrix]]
    everything: pd.DataFrame
    starts: pd.DataFrame
    at_chance: list[verdicts.AtChance]

    @property
    def parameters(self) -> dict[str, Any]:
        return dict(speech_llms=self.speech_llms, ast_encoder=self.ast_encoder, directions=self.directions,
                    pruned_fractions=self.fractions, healing=self.strategies)

    @property
    def walks(self) -> pd.DataFrame:
        """The walks healed with the last strategy: Table 2 and the verdict."""
        return self.everything[self.everything.strategy == self.strategies[-1]]

    def table_2(self) -> pd.DataFrame:
        """BLEU unpruned (–) and per share of layers removed along each path (relative change in brackets)."""
        walks = self.walks
        removed = [f"{n}/{L} ({n / L:.1%})" if n else "–" for n, L in zip(walks.n, walks.layers)]
        table = walks.assign(**{"layers removed": removed, "BLEU": walks.apply(_bleu_cell, axis=1)})
        table = table.pivot_table(index=["model", "n", "layers removed"], columns=["path", "direction"],
                                  values="BLEU", aggfunc="first")
        return table.droplevel("n").reindex(columns=[AST_PATH, ASR_PATH], level="path")

    @cached_property
    def _starts(self) -> pd.DataFrame:
        starts = self.starts.pivot_table(index=["model", "direction", "n"], columns="path", values="start")
        starts = starts.astype(int)
        starts["same block"] = starts[AST_PATH] == starts[ASR_PATH]
        return starts

    def starts_table(self) -> pd.DataFrame:
        """Where each path starts its removed block (ℓ*(n)), and whether the two agree."""
        return self._starts.rename_axis(index={"n": "block size n"}, columns=None)

    def delta_figure(self):
        walks = self.walks
        pruned = walks[walks.n > 0].assign(curve=lambda f: f.direction + ", " + f.path)
        return plots.delta_panels({"Relative BLEU change along the AST- and ASR-derived paths":
                                   pruned.assign(set=pruned.model)}, hue="curve", threshold=AST_THRESHOLD,
                                  metric="relative BLEU change", panel_size=(6.5, 4))

    @cached_property
    def _summary(self) -> pd.DataFrame:
        rows = []
        for (llm, direction), group in self.walks.groupby(["model", "direction"], sort=False):
            by_path = dict(list(group.groupby("path")))
            ast_walk, asr_walk = by_path[AST_PATH], by_path[ASR_PATH]
            ast_scores, asr_scores = ast_walk.set_index("n")["score"], asr_walk.set_index("n")["score"]
            run, same_block = self.runs[llm, direction], self._starts.loc[(llm, direction)]["same block"]
            rows.append({"model": llm, "direction": direction, "baseline BLEU": float(ast_scores.loc[0]),
                         "removable (AST-derived)": self.study.removable(ast_walk, run),
                         "removable (ASR-derived)": self.study.removable(asr_walk, run),
                         "largest BLEU gap": float((ast_scores - asr_scores).abs().max()),
                         "levels with the same block": float(same_block.mean()),
                         "path agreement (every n)": angles.path_agreement(*self.matrices[llm, direction])})
        return pd.DataFrame(rows)

    def summary(self) -> Finding:
        """Per decoder and direction: the unpruned BLEU, each path's removable fraction, the largest BLEU gap
        between the paths, and how often they remove the same block."""
        s = self._summary
        gap = "largest BLEU gap (points)"
        table = s.set_index(["model", "direction"]).rename(columns={"largest BLEU gap": gap}).style.format(
            {"baseline BLEU": "{:.2f}", "removable (AST-derived)": "{:.1%}",
             "removable (ASR-derived)": "{:.1%}", gap: "{:.2f}", "levels with the same block": "{:.0%}",
             "path agreement (every n)": "{:.0%}"})
        return Finding(table, {"max_gap": s["largest BLEU gap"].max(),
                               "same_block": s["levels with the same block"].mean(),
                               "path_agreement": s["path agreement (every n)"].mean(),
                               "removable_ast": s["removable (AST-derived)"].min(),
                               "removable_asr": s["removable (ASR-derived)"].min()})

    def healing(self) -> Finding:
        """BLEU along the AST-derived path for each strategy (relative change in brackets); the numbers: the
        relative change averaged over levels and directions, per strategy (nan where not walked)."""
        walked = self.everything[(self.everything.path == AST_PATH) & (self.everything.n > 0)]
        table = walked.assign(BLEU=walked.apply(_bleu_cell, axis=1)).pivot_table(
            index=["model", "direction", "n"], columns="strategy", values="BLEU", aggfunc="first")
        table = table.reindex(columns=self.strategies).rename_axis(index={"n": "layers removed"})
        mean = walked.replace([float("inf"), float("-inf")], float("nan")).groupby("strategy").delta.mean()
        return Finding(table, {f"mean_delta_{s}": mean.get(s, float("nan")) for s in STRATEGIES})

    def claim_6(self) -> verdicts.ClaimVerdict:
        last = self.strategies[-1]
        steps = self.study.settings.healing_steps
        how = "without healing" if last == "none" else f"{last} healing, {steps} steps"
        return verdicts.claim_6(self._summary.to_dict("records"), self.at_chance,
                                recipe=self.study.settings.recipe,
                                variant=f"translation models with frozen decoders of "
                                        f"{', '.join(self.speech_llms)}, {how}")


def direction_encoder(study: Study, ast_encoder: str | dict | None, direction: str):
    """The speech encoder of one direction's AST model: ``ast_encoder`` names one for every direction or
    {direction: name} (the paper's Whisper large-v3 for Fr->En only); a direction it leaves out uses the
    study's encoder."""
    if isinstance(ast_encoder, dict):
        return ast_encoder.get(direction, study.settings.encoder)
    return ast_encoder


def measure(study: Study, speech_llms: list[str], directions: list[str], ast_encoder: str | dict,
            fractions: list[float] | None, healing: str | list[str]) -> Transfer:
    """For every decoder and direction: the AST model (encoder ``ast_encoder``: one name or {direction:
    name}, else the study's encoder) pruned at ``fractions`` along its own path (from its own inputs) with
    each strategy of ``healing``, and along the path of the ASR model of the same decoder with the last;
    points both paths share are computed once, and the unpruned scores go to the results file."""
    strategies = [healing] if isinstance(healing, str) else list(healing)
    if not strategies:
        raise UserError("healing is empty: name at least one strategy (none, decoder, projector, both).")
    for strategy in strategies:
        check_strategy(strategy)
    walks, starts, matrices, runs, at_chance = [], [], {}, {}, []
    for llm in speech_llms:
        asr_run = study.slam(llm)  # chapter 3's model and path
        asr_matrix = study.speech_angles(asr_run)
        del asr_run
        for direction in directions:
            run = study.slam(llm, f"ast-{direction}", encoder=direction_encoder(study, ast_encoder, direction))
            ast_matrix = study.speech_angles(run)
            matrices[llm, direction] = ast_matrix, asr_matrix
            for path_name, matrix in ((AST_PATH, ast_matrix), (ASR_PATH, asr_matrix)):
                path = matrix.optimal_path()
                for strategy in strategies if path_name == AST_PATH else strategies[-1:]:  # compared on one
                    walk = study.walk(run, path, fractions, strategy=strategy)
                    walks.append(walk.assign(model=llm, direction=direction, path=path_name,
                                             layers=run.num_layers))
                if path_name == AST_PATH:  # the unpruned model's scores (every walk's n = 0 point)
                    study.record_baseline(run, walk)
                    if bad := study.unusable(walk, run.task):
                        at_chance.append(verdicts.AtChance(llm, bad, run.task))
                starts += [{"model": llm, "direction": direction, "path": path_name, "n": n, "start": path[n]}
                           for n in sorted(set(walk.n) - {0})]
            runs[llm, direction] = run
    return Transfer(study, list(speech_llms), list(directions), ast_encoder, fractions, strategies, runs,
                    matrices, pd.concat(walks, ignore_index=True), pd.DataFrame(starts), at_chance)
