"""Chapter 5, efficiency: what removing decoder layers saves, in time and peak memory, first for the
decoder alone on a random prompt, then for the whole SpeechLLM transcribing real utterances from their
audio, each against its ideal (claim 7). The measurements are ``speechllm_redundancy.efficiency``'s.

    costs = efficiency.measure(study, ["smollm2-135m"], fractions=[0.0, 0.2, 0.4],
                               speech_llm_fractions=[0.4], split="test-clean", utterances=16, repeats=3)
    costs.speech_llm_table(); costs.claim_7()
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import pandas as pd

from speechllm_redundancy import efficiency, plots, verdicts
from speechllm_redundancy.experiments import Study
from speechllm_redundancy.report import Finding

MIB = 2**20


def with_spread(frame: pd.DataFrame, phase: str) -> list[str]:
    """Each row's saving of ``phase`` with its range over the repeats, as text."""
    columns = [f"{phase}_saving", f"{phase}_saving_low", f"{phase}_saving_high"]
    return [f"{s:.1%} ({low:.0%} to {high:.0%})" for s, low, high in frame[columns].values]


@dataclass
class Costs:
    """Chapter 5's measurements: ``decoders`` (``efficiency.cached_efficiency`` of each decoder alone) and
    ``speech`` (``efficiency.cached_speech_llm_efficiency`` of each whole SpeechLLM, a ``model`` column
    added), with the settings they were made with."""

    study: Study
    speech_llms: list[str]
    fractions: list[float]
    speech_llm_fractions: list[float]
    split: str
    utterances: int
    repeats: int
    decoders: pd.DataFrame
    speech: pd.DataFrame

    @property
    def parameters(self) -> dict[str, Any]:
        return dict(speech_llms=self.speech_llms, pruned_fractions=self.fractions,
                    speech_llm_fractions=self.speech_llm_fractions, timing_split=self.split,
                    timing_utterances=self.utterances, repeats=self.repeats)

    def decoder_table(self):
        """The decoder alone: median prefill and decoding times, the savings (decoding's with its spread)
        against their ideals, and the peak memory during decoding against its ideal."""
        d = self.decoders
        table = d.assign(**{"decode saving (spread)": with_spread(d, "decode"),
                            "peak (MiB)": d["decode_peak_bytes"] / MIB,
                            "ideal peak (MiB)": d["ideal_decode_peak_bytes"] / MIB})
        columns = {"fraction": "fraction removed", "prefill_s": "prefill (s)", "decode_s": "decode (s)",
                   "prefill_saving": "prefill saving", "ideal_prefill_saving": "ideal prefill saving",
                   "decode saving (spread)": "decode saving (spread)",
                   "ideal_decode_saving": "ideal decode saving", "peak (MiB)": "peak (MiB)",
                   "ideal peak (MiB)": "ideal peak (MiB)"}
        table = table.set_index(["model", "removed"])[list(columns)].rename(columns=columns)
        return table.rename_axis(index={"removed": "layers removed"}).style.format(
            {c: "{:.1%}" for c in ("fraction removed", "prefill saving", "ideal prefill saving",
                                   "ideal decode saving")}
            | {"prefill (s)": "{:.3f}", "decode (s)": "{:.3f}", "peak (MiB)": "{:.1f}",
               "ideal peak (MiB)": "{:.1f}"})

    def decoder_figure(self):
        return plots.efficiency_plot(self.decoders,
                                     title="The decoder alone (random prompt) vs fraction of layers removed")

    def speech_llm_table(self):
        """The whole SpeechLLM: median seconds per phase summed over the utterances, the encoder's and the
        total saving with their spreads, the ideal saving, and the peak memory against its ideal."""
        s = self.speech
        base = s.groupby("model")["peak_bytes"].transform("first")
        table = s.assign(**{"encode saving (spread)": with_spread(s, "encode"),
                            "total saving (spread)": with_spread(s, "total"),
                            "peak (MiB)": s["peak_bytes"] / MIB,
                            "ideal peak (MiB)": s["ideal_peak_bytes"] / MIB,
                            "peak ratio": s["peak_bytes"] / base,
                            "ideal ratio": s["ideal_peak_bytes"] / base})
        columns = {"fraction": "fraction removed", "encode_s": "encode (s)", "prefill_s": "prefill (s)",
                   "decode_s": "decode (s)", "total_s": "total (s)",
                   "encode saving (spread)": "encode saving (spread)",
                   "total saving (spread)": "total saving (spread)",
                   "ideal_total_saving": "ideal total saving",
                   "peak (MiB)": "peak (MiB)", "ideal peak (MiB)": "ideal peak (MiB)",
                   "peak ratio": "peak ratio", "ideal ratio": "ideal ratio"}
        table = table.set_index(["model", "removed"])[list(columns)].rename(columns=columns)
        return table.rename_axis(index={"removed": "layers removed"}).style.format(
            {"fraction removed": "{:.1%}", "ideal total saving": "{:.1%}", "peak (MiB)": "{:.1f}",
             "ideal peak (MiB)": "{:.1f}", "peak ratio": "{:.3f}", "ideal ratio": "{:.3f}"}
            | {c: "{:.2f}" for c in ("encode (s)", "prefill (s)", "decode (s)", "total (s)")})

    def speech_llm_figure(self):
        return plots.speech_llm_costs(self.speech, utterances=self.utterances)

    @cached_property
    def _points(self):
        """The largest decoder, its SpeechLLM's row nearest the paper's 40 % and its unpruned row, and its
        decoder alone's row nearest 40 %."""
        largest = self.speech.groupby("model")["parameter_bytes"].max().idxmax()
        rows = self.speech[self.speech.model == largest].reset_index(drop=True)
        point = rows.iloc[(rows["fraction"] - efficiency.PAPER_FRACTION).abs().idxmin()]
        alone = self.decoders[self.decoders.model == largest].reset_index(drop=True)
        alone_point = alone.iloc[(alone["fraction"] - efficiency.PAPER_FRACTION).abs().idxmin()]
        return largest, point, rows.iloc[0], alone_point

    def finding(self) -> Finding:
        """The numbers of the chapter's finding, at the point nearest the paper's 40 % of the largest
        decoder: the SpeechLLM's time saving (with its spread and ideal), the decoder alone's, and the peak
        memory ratio against its ideal and the paper's."""
        _, point, unpruned, alone = self._points
        mem_base, mem_pruned = unpruned["peak_bytes"] / MIB, point["peak_bytes"] / MIB
        return Finding(None, {
            "saving_spread": f"{point['total_saving_low']:.0%} to {point['total_saving_high']:.0%}",
            "fraction": point["fraction"], "saving": point["total_saving"],
            "ideal_saving": point["ideal_total_saving"], "decoder_fraction": alone["fraction"],
            "decoder_saving": alone["decode_saving"], "decoder_ideal": alone["ideal_decode_saving"],
            "mem_base": mem_base, "mem_pruned": mem_pruned, "mem_ratio": mem_pruned / mem_base,
            "mem_ideal": point["ideal_peak_bytes"] / MIB / mem_base,
            "paper_ratio": efficiency.PAPER_PEAK_GIB[1] / efficiency.PAPER_PEAK_GIB[0],
            "paper_ideal": efficiency.paper_ideal_peak_ratio()})

    def claim_7(self) -> verdicts.ClaimVerdict:
        largest, point, unpruned, _ = self._points
        s = self.study.settings
        paper_base, paper_pruned = efficiency.PAPER_PEAK_GIB
        return verdicts.claim_7(point, unpruned, paper_ratio=paper_pruned / paper_base,
                                paper_ideal=efficiency.paper_ideal_peak_ratio(), recipe=s.recipe,
                                variant=f"{largest} SpeechLLM, {s.encoder} encoder + projector + decoder, "
                                        f"{point['utterances']} {self.split} utterances, {s.device}")


def measure(study: Study, speech_llms: list[str], fractions: list[float], speech_llm_fractions: list[float],
            split: str = "test-clean", utterances: int = 16, repeats: int = 3) -> Costs:
    """Time and peak memory, ``repeats`` times each: every decoder of ``speech_llms`` alone with each of
    ``fractions`` of its layers removed, and its whole SpeechLLM (the study's trained SLAM model) with each
    of ``speech_llm_fractions`` removed, transcribing the first ``utterances`` of ``split`` one at a time.
    Both are cached, keyed by model and settings."""
    s = study.settings
    decoders = pd.concat([efficiency.cached_efficiency(llm, fractions, repeats=repeats, device=s.device,
                                                       seed=s.seed) for llm in speech_llms],
                         ignore_index=True)
    manifest = study.split(split)
    runs = {llm: study.slam(llm) for llm in speech_llms}
    speech = pd.concat([efficiency.cached_speech_llm_efficiency(
        run.model, run.key, manifest, speech_llm_fractions, limit=utterances, repeats=repeats,
        device=s.device).assign(model=llm) for llm, run in runs.items()], ignore_index=True)
    peaks = ["peak_bytes", "ideal_peak_bytes"]
    speech[peaks] = speech[peaks].apply(pd.to_numeric)  # None (not measurable here) → NaN
    return Costs(study, list(speech_llms), list(fractions), list(speech_llm_fractions), split, utterances,
                 repeats, decoders, speech)
