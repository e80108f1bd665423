"""Chapter 3, ASR across scales: every decoder's SLAM model pruned along its own optimal path, healed,
and its removable fraction set against the decoder's size, in the layout of the paper's Table 1 (claim 5).

    scales = scales.measure(study, ["smollm2-135m", "qwen2.5-coder-0.5b"], strategy="both", fractions=None)
    scales.table_1(); scales.size_figure(); scales.claim_5()
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Sequence

import pandas as pd

from speechllm_redundancy import angles, plots, sweep, verdicts
from speechllm_redundancy.experiments import SlamRun, Study
from speechllm_redundancy.report import Finding

TAU = 0.2  # the distance below which a block counts as low-distance, for the numbers the prose quotes
THRESHOLDS = [round(0.02 * i, 2) for i in range(26)]  # the low-distance region's curve
SIZE, REMOVABLE = "parameters (M)", "removable fraction"
SHARE = "share of blocks with D ≤ τ"


def walked_level(removed_layers: int, num_layers: int, fractions: Sequence[float] | None) -> float:
    """The largest walked fraction whose block (``sweep.path_sizes``) is no larger than ``removed_layers``,
    the decoder's removable layers (0 when none): claim 5 compares decoders by the level they reached. The
    paper walks every n (``fractions`` None), where the level is n / L itself."""
    if fractions is None:
        return removed_layers / num_layers
    return max((f for f in fractions if sweep.path_sizes(num_layers, [f])[0] <= removed_layers), default=0.0)


def decoder_millions(run: SlamRun) -> float:
    """The decoder's parameters, in millions."""
    return sum(p.numel() for p in run.model.llm.parameters()) / 1e6


@dataclass
class Scales:
    """Chapter 3's models and walks: ``runs`` and ``walks`` (by model name: the decoder, "+ LoRA" for the
    LoRA models) in the profile's order, and ``summary``, one row per model (its size, removable fraction
    and, in ``unusable``, the sets on which it is at chance before pruning)."""

    study: Study
    speech_llms: list[str]
    lora_llms: list[str]
    lora: dict | None
    lora_steps: int | None
    strategy: str
    fractions: list[float] | None
    runs: list[SlamRun]
    walks: dict[str, pd.DataFrame]
    summary: pd.DataFrame

    @property
    def parameters(self) -> dict[str, Any]:
        return dict(speech_llms=self.speech_llms, lora_llms=self.lora_llms, lora=self.lora,
                    lora_steps=self.lora_steps, healing=self.strategy, pruned_fractions=self.fractions)

    @property
    def by_size(self) -> pd.DataFrame:
        """The frozen decoders' rows of ``summary``, smallest first: the scale comparison."""
        return self.summary[~self.summary["LoRA"]].sort_values(SIZE)

    def table_1(self) -> pd.DataFrame:
        """WER (%) of each model unpruned and at its largest acceptable pruning level (relative change in
        brackets)."""
        rows = []
        for _, s in self.summary.iterrows():
            walk = self.walks[s["model"]]
            for n in sorted({0, int(s["layers removable"])}):
                at = walk[walk.n == n].set_index("set")
                row = {"model": s["model"], "layers removed": f"{n}/{s['layers']} ({n / s['layers']:.1%})"}
                for name in self.study.eval_sets("asr"):
                    score, delta = at.loc[name, "score"], at.loc[name, "delta"]
                    row[f"WER {name} (%)"] = f"{score:.1f}" + (f" ({delta:+.1%})" if n else "")
                rows.append(row)
        return pd.DataFrame(rows).set_index(["model", "layers removed"])

    def delta_figure(self):
        """The relative WER change along each model's path."""
        pruned = pd.concat(self.walks.values(), ignore_index=True)
        return plots.delta_panels({f"Relative WER change along the pruning path ({self.strategy} healing)":
                                   pruned[pruned.n > 0]}, hue="model", panel_size=(6.5, 4))

    def size_figure(self):
        return plots.removable_by_size(self.summary, size=SIZE, removable=REMOVABLE)

    def removable(self) -> Finding:
        """Each model's size and removable fraction; the numbers: the smallest and the largest frozen
        decoder's removable fraction."""
        ordered = self.by_size
        table = self.summary.drop(columns=["unusable", "LoRA"]).set_index("model")
        return Finding(table.style.format({SIZE: "{:.1f}", REMOVABLE: "{:.1%}"}),
                       {"smallest": ordered[REMOVABLE].iloc[0], "largest": ordered[REMOVABLE].iloc[-1]})

    @cached_property
    def _width(self) -> pd.DataFrame:
        return pd.DataFrame([{"model": run.llm, SIZE: decoder_millions(run), "threshold τ": tau,
                              SHARE: angles.low_distance_share(m, tau)}
                             for run in self.runs if not run.lora for m in [self.study.speech_angles(run)]
                             for tau in THRESHOLDS])

    def width_figure(self):
        """The share of each frozen decoder's blocks within distance τ, for every τ."""
        return plots.low_distance_curves(self._width, threshold="threshold τ", share=SHARE)

    def width(self) -> Finding:
        """The low-distance share at ``TAU`` of each frozen decoder, smallest first."""
        at_tau = self._width[self._width["threshold τ"] == TAU].sort_values(SIZE)
        table = at_tau.drop(columns="threshold τ").set_index("model").style.format(
            "{:.1f}", subset=[SIZE]).format("{:.0%}", subset=[SHARE])
        return Finding(table, {"tau": TAU, "width_smallest": at_tau[SHARE].iloc[0],
                               "width_largest": at_tau[SHARE].iloc[-1]})

    def claim_5(self) -> verdicts.ClaimVerdict:
        """Claim 5 on the frozen decoders, each by the highest level walked that it stays within the bar at
        (``walked_level``)."""
        ordered = self.by_size
        how = "no healing" if self.strategy == "none" else \
            f"{self.strategy} healing, {self.study.settings.healing_steps} steps"
        levels = [walked_level(int(r["layers removable"]), int(r["layers"]), self.fractions)
                  for _, r in ordered.iterrows()]
        return verdicts.claim_5(list(zip(ordered["model"], levels)),
                                [verdicts.AtChance(r["model"], r["unusable"]) for _, r in ordered.iterrows()
                                 if r["unusable"]],
                                variant=f"frozen decoders of {', '.join(ordered['model'])}, {how}",
                                recipe=self.study.settings.recipe,
                                highest=max(self.fractions) if self.fractions else None)


def measure(study: Study, speech_llms: list[str], lora_llms: list[str] = (), *, lora: dict | None = None,
            lora_steps: int | None = None, strategy: str = "both",
            fractions: list[float] | None = None) -> Scales:
    """The SLAM model of every decoder of ``speech_llms`` (frozen) and of ``lora_llms`` (LoRA ``lora`` on
    the decoder, ``lora_steps`` steps), each pruned along its own speech-derived path at ``fractions``
    (None: every n up to half), healed with ``strategy`` and scored on every evaluation set; the unpruned
    scores go to the results file."""
    runs, walks, summary = [], {}, []
    for llm, adapters in [(llm, None) for llm in speech_llms] + [(llm, lora) for llm in lora_llms]:
        run = study.slam(llm, lora=adapters, steps=lora_steps if adapters else None)
        name = f"{llm} + LoRA" if adapters else llm
        walk = study.walk(run, study.speech_path(run), fractions, strategy=strategy)
        study.record_baseline(run, walk)
        runs.append(run)
        walks[name] = walk.assign(model=name)
        fraction = study.removable(walk, run)
        summary.append({"model": name, "layers": run.num_layers, SIZE: decoder_millions(run),
                        REMOVABLE: fraction, "layers removable": round(fraction * run.num_layers),
                        "LoRA": bool(adapters), "unusable": study.unusable(walk)})
    return Scales(study, list(speech_llms), list(lora_llms), lora, lora_steps, strategy, fractions, runs,
                  walks, pd.DataFrame(summary))
