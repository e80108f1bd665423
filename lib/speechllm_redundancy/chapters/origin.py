"""Chapter 1, the origin of redundancy: the distance maps D(ℓ, n) of the same utterances read as text and
heard as speech, where their closest blocks lie, and what LoRA on the decoder changes (claims 1–3).

    maps = origin.measure(study, text_llms=["smollm2-135m"], speech_llms=["smollm2-135m"],
                          lora_llms=["smollm2-135m"], samples=200, lora={"r": 8, "alpha": 16})
    maps.heatmaps(); maps.comparison().table; maps.front_ends().numbers; maps.claim_1()
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from speechllm_redundancy import angles, plots, verdicts
from speechllm_redundancy.angles import AngleMatrix
from speechllm_redundancy.experiments import Study
from speechllm_redundancy.report import Finding
from speechllm_redundancy.sweep import baseline_scores

SPLIT = "test-clean"  # whose transcripts (text) and audio (speech) give the maps
CONTROL = "gold transcript in the SLAM layout"  # claim 1's clean control of a speech map
TRAINED, UNTRAINED = "trained", "untrained (at initialisation)"  # the front end a speech map was read through
DEEP = "optimal block in the deeper half"
LAST = "block with the last layer is the farthest"
TEXT, FROZEN, LORA = ("pruned-block distance, text", "pruned-block distance, frozen",
                      "pruned-block distance, LoRA")


def _lora_run(study: Study, llm: str, lora: dict | None, lora_steps: int | None):
    """The SLAM model of decoder ``llm`` with LoRA on the decoder (``lora`` None: the frozen decoder)."""
    return study.slam(llm, lora=lora, steps=lora_steps if lora else None)


@dataclass
class Maps:
    """Chapter 1's distance maps, all on the first ``samples`` utterances of ``SPLIT``: each text LLM fed the
    transcripts (``text``), each frozen-decoder SLAM model fed their audio (``speech``) and, as its clean
    control, their transcripts' token embeddings in the speech slot (``gold``), the same decoder fed the
    audio through its front end at initialisation (``untrained``: how much of the speech map's agreement
    with the control is the decoder's own), and each LoRA-decoder SLAM model fed the audio
    (``lora_speech``). ``at_chance``: the frozen SLAM models no better than chance."""

    study: Study
    sentences: list[str]
    samples: int
    text_llms: list[str]
    speech_llms: list[str]
    lora_llms: list[str]
    lora: dict | None
    lora_steps: int | None
    text: dict[str, AngleMatrix]
    speech: dict[str, AngleMatrix]
    gold: dict[str, AngleMatrix]
    untrained: dict[str, AngleMatrix]
    lora_speech: dict[str, AngleMatrix]
    at_chance: list[verdicts.AtChance]

    @property
    def parameters(self) -> dict[str, Any]:
        """The chapter parameters these maps were measured with (its "This run" table)."""
        return dict(speech_llms=self.speech_llms, text_llms=self.text_llms, angle_samples=self.samples,
                    lora_llms=self.lora_llms, lora=self.lora, lora_steps=self.lora_steps)

    def plain(self, llm: str) -> AngleMatrix:
        """The text map of decoder ``llm`` (measured now if ``llm`` is not one of the text LLMs)."""
        return self.text[llm] if llm in self.text else self.study.text_angles(llm, self.sentences)

    def frozen(self, llm: str) -> AngleMatrix:
        """The speech map of the frozen-decoder SLAM model of ``llm`` (measured now if not among them)."""
        if llm in self.speech:
            return self.speech[llm]
        return self.study.speech_angles(self.study.slam(llm), SPLIT, self.samples)

    # --------------------------------------------------------------------------------------------- shown
    def inputs(self) -> Finding:
        """The first transcripts, and how many utterances each map averages."""
        shown = self.sentences[:5]
        table = pd.DataFrame({"transcript": shown}, index=pd.RangeIndex(1, len(shown) + 1, name="utterance"))
        return Finding(table, {"samples": len(self.sentences)})

    def heatmaps(self):
        """Every map on one colour scale: the first LoRA decoder (else the first SLAM decoder) as text, in its
        SLAM model and with LoRA, then the other text LLMs, SLAM and LoRA models."""
        first = (self.lora_llms or self.speech_llms)[0]
        panels = {f"{first} (text)": self.plain(first), f"{first} (SLAM, speech)": self.frozen(first)}
        if first in self.lora_speech:
            panels[f"{first} (SLAM + LoRA, speech)"] = self.lora_speech[first]
        panels |= {f"{name} (text)": m for name, m in self.text.items() if name != first}
        panels |= {f"{name} (SLAM, speech)": m for name, m in self.speech.items() if name != first}
        panels |= {f"{name} (SLAM + LoRA, speech)": m for name, m in self.lora_speech.items()
                   if name != first}
        return plots.angle_heatmaps(panels, ncols=min(4, len(panels)))

    def path_figure(self):
        """Each SLAM decoder's optimal path on speech, on its gold-transcript control and on plain text."""
        return plots.path_panels({
            f"Optimal pruning path of {name}": {"gold transcript, SLAM layout": self.gold[name],
                                                "plain text": self.plain(name), "speech": s}
            for name, s in self.speech.items()})

    @cached_property
    def _comparison(self) -> pd.DataFrame:
        rows = [{"decoder": name, "speech compared with": reference, "layers": s.num_layers,
                 **angles.compare(other, s)}
                for name, s in self.speech.items()
                for reference, other in ((CONTROL, self.gold[name]), ("plain text", self.plain(name)))]
        return pd.DataFrame(rows).set_index(["decoder", "speech compared with"])

    def control_agreement(self) -> tuple[float, float]:
        """Claim 1's numbers, averaged over the decoders: the speech maps' mean |ΔD| from their controls and
        the share of block sizes whose optimal block both pick."""
        control = self._comparison.xs(CONTROL, level="speech compared with")
        return float(control["mean_abs_difference"].mean()), float(control["path_agreement"].mean())

    def comparison(self) -> Finding:
        """Speech against its gold-transcript control and against plain text, per decoder."""
        mean_delta, agreement = self.control_agreement()
        names = {"mean_abs_difference": "mean |ΔD|", "path_agreement": "same ℓ*(n), share of n",
                 "mean_removed_overlap": "removed layers in common (Jaccard)"}
        formats = ["{:.3f}", "{:.0%}", "{:.0%}"]
        table = self._comparison.rename(columns=names).style.format(dict(zip(names.values(), formats)))
        return Finding(table, {"mean_abs_delta": mean_delta, "path_agreement": agreement})

    @cached_property
    def _front_ends(self) -> pd.DataFrame:
        rows = [{"decoder": name, "front end": end, **angles.compare(self.gold[name], m)}
                for name in self.speech
                for end, m in ((TRAINED, self.speech[name]), (UNTRAINED, self.untrained[name]))]
        return pd.DataFrame(rows).set_index(["decoder", "front end"])

    def untrained_agreement(self) -> tuple[float, float]:
        """``control_agreement``'s numbers for the speech read through the untrained front ends: mean |ΔD|
        from the same gold-transcript controls and the share of block sizes whose optimal block both pick."""
        control = self._front_ends.xs(UNTRAINED, level="front end")
        return float(control["mean_abs_difference"].mean()), float(control["path_agreement"].mean())

    def front_ends(self) -> Finding:
        """Each decoder's speech map against its gold-transcript control, read through the trained front end
        and through the same front end untrained (projector, and CTC head and soft prompt where the model has
        them, at their initialisation); the numbers its prose quotes and a sentence saying which of the two
        the agreement comes with (``front_end_reading``)."""
        trained, untrained = self.control_agreement(), self.untrained_agreement()
        names = {"mean_abs_difference": "mean |ΔD| from the control",
                 "path_agreement": "same ℓ*(n) as the control, share of n",
                 "mean_removed_overlap": "removed layers in common with the control (Jaccard)"}
        table = self._front_ends.rename(columns=names).style.format(
            dict(zip(names.values(), ["{:.3f}", "{:.0%}", "{:.0%}"])))
        return Finding(table, {"untrained_mean_abs_delta": untrained[0],
                               "untrained_path_agreement": untrained[1],
                               "front_end_reading": front_end_reading(trained, untrained)})

    @cached_property
    def _depth(self) -> pd.DataFrame:
        maps = {**{f"{n} (text)": m for n, m in self.text.items()},
                **{f"{n} (speech)": m for n, m in self.speech.items()}}
        return pd.DataFrame({name: depth_profile(m) for name, m in maps.items()}).T.rename_axis("map")

    def depth_shares(self) -> tuple[float, float]:
        """Claim 3's numbers, averaged over the maps: the shares of block sizes whose optimal block lies in
        the deeper half, and whose block ending at the last layer is the farthest."""
        return float(self._depth[DEEP].mean()), float(self._depth[LAST].mean())

    def depth(self) -> Finding:
        """Where each map's closest and farthest blocks lie (shares of its block sizes n)."""
        deep, last = self.depth_shares()
        table = self._depth.rename(columns={DEEP: f"{DEEP} (share of n)", LAST: f"{LAST} (share of n)"})
        table = table.style.format({"layers": "{:.0f}", f"{DEEP} (share of n)": "{:.0%}",
                                    f"{LAST} (share of n)": "{:.0%}"})
        return Finding(table, {"deep_share": deep, "last_share": last})

    @cached_property
    def _lora(self) -> pd.DataFrame:
        rows = []
        for name, m in self.lora_speech.items():
            frozen = self.frozen(name)
            rows.append({"decoder": name, TEXT: angles.pruned_block_distance(self.plain(name)),
                         FROZEN: angles.pruned_block_distance(frozen), LORA: angles.pruned_block_distance(m),
                         "paths agree": angles.path_agreement(frozen, m)})
        return pd.DataFrame(rows, columns=["decoder", TEXT, FROZEN, LORA, "paths agree"]).set_index("decoder")

    def lora_table(self):
        """Per LoRA decoder: the mean distance D(ℓ*(n), n) of the blocks its text map, its frozen SLAM model
        and its LoRA SLAM model would prune, and how often the two SLAM models' paths agree."""
        return self._lora.rename(columns={"paths agree": "same ℓ*(n), frozen vs LoRA"}).style.format(
            {TEXT: "{:.3f}", FROZEN: "{:.3f}", LORA: "{:.3f}", "same ℓ*(n), frozen vs LoRA": "{:.0%}"})

    # ------------------------------------------------------------------------------------------ verdicts
    def claim_1(self) -> verdicts.ClaimVerdict:
        mean_delta, agreement = self.control_agreement()
        return verdicts.claim_1(mean_delta, agreement, self.at_chance, recipe=self.study.settings.recipe,
                                variant=f"frozen-decoder SLAM maps of {', '.join(self.speech_llms)} vs their "
                                        "gold-transcript controls", untrained=self.untrained_agreement())

    def claim_3(self) -> verdicts.ClaimVerdict:
        deep, last = self.depth_shares()
        return verdicts.claim_3(deep, last, recipe=self.study.settings.recipe,
                                variant=f"text maps of {', '.join(self.text_llms)} and frozen-decoder SLAM "
                                        f"maps of {', '.join(self.speech_llms)}")


def front_end_reading(trained: tuple[float, float], untrained: tuple[float, float]) -> str:
    """Which front end the speech maps' agreement with their gold-transcript controls comes with, in words,
    from (mean |ΔD|, path agreement) through the trained and the untrained front ends, judged by claim 1's
    own bar (``verdicts.maps_agree``, the decision itself unchanged)."""
    quoted = (f"mean |ΔD| {untrained[0]:.3f} against {trained[0]:.3f} trained, the same optimal block for "
              f"{untrained[1]:.0%} of block sizes against {trained[1]:.0%}")
    if verdicts.maps_agree(*untrained):
        return (f"An untrained front end already meets claim 1's bar ({quoted}): the agreement with text "
                "is the frozen decoder's own (it reads even the untrained front end's output in this layout "
                "like text), not something the speech training added")
    if verdicts.maps_agree(*trained):
        return (f"An untrained front end does not meet claim 1's bar ({quoted}): the agreement with text "
                "comes with the trained front end")
    return (f"Neither front end meets claim 1's bar ({quoted}): the untrained front end is "
            f"{'closer to' if untrained[0] < trained[0] else 'no closer to'} the text control")


def depth_profile(m: AngleMatrix) -> dict[str, float]:
    """For one map: the share of block sizes n whose optimal block starts in the deeper half of the possible
    starts, and whose block ending at the last layer has the largest distance of its column."""
    num_layers, path = m.num_layers, m.optimal_path()
    deep = [path[n] >= (num_layers - n) / 2 for n in path]
    last_max = [np.nanargmax(m.distances[: num_layers - n + 1, n]) == num_layers - n for n in path]
    return {"layers": num_layers, DEEP: float(np.mean(deep)), LAST: float(np.mean(last_max))}


def measure(study: Study, text_llms: list[str], speech_llms: list[str], lora_llms: list[str], samples: int, *,
            lora: dict | None = None, lora_steps: int | None = None) -> Maps:
    """Every map of chapter 1 on the first ``samples`` utterances of ``SPLIT`` (each cached): the text LLMs
    on the transcripts; each frozen-decoder SLAM model of ``speech_llms`` on the audio, on its
    gold-transcript control and on the audio through its untrained front end, with whether it does better
    than chance; each SLAM model of ``lora_llms`` with LoRA (``lora``, trained ``lora_steps`` steps; None:
    the profile's) on the audio."""
    sentences = study.references(SPLIT, "asr", samples)
    text = {name: study.text_angles(name, sentences) for name in text_llms}
    speech, gold, untrained, at_chance = {}, {}, {}, []
    for name in speech_llms:  # each frozen SLAM model loaded once: its maps, its controls, its baseline
        run = study.slam(name)
        speech[name] = study.speech_angles(run, SPLIT, samples)
        gold[name] = study.gold_text_angles(run, SPLIT, samples)
        untrained[name] = study.untrained_speech_angles(run, SPLIT, samples)
        if bad := study.unusable(study.baseline(run)):
            at_chance.append(verdicts.AtChance(name, bad))
        del run
    lora_speech = {name: study.speech_angles(_lora_run(study, name, lora, lora_steps), SPLIT, samples)
                   for name in lora_llms}
    return Maps(study, sentences, samples, list(text_llms), list(speech_llms), list(lora_llms), lora,
                lora_steps, text, speech, gold, untrained, lora_speech, at_chance)


@dataclass
class Tolerance:
    """The pruning tolerance of each LoRA decoder's frozen and LoRA SLAM models: one row per model (its
    baseline WER, removable fraction and highest level walked), those at chance, and how they were healed."""

    frame: pd.DataFrame
    at_chance: list[verdicts.AtChance]
    fractions: list[float] | None
    strategy: str
    healing_steps: int

    @property
    def parameters(self) -> dict[str, Any]:
        return dict(pruned_fractions=self.fractions, healing=self.strategy)

    def how(self) -> str:
        if self.strategy == "none":
            return "no healing"
        return f"{self.strategy} healing, {self.healing_steps} steps"

    def table(self):
        """The models' baselines and removable fractions (None when nothing was walked)."""
        if self.frame.empty:
            return None
        return self.frame.set_index(["decoder", "decoder training"]).style.format(
            {c: "{:.1f}" for c in self.frame.columns if c.startswith("WER")}
            | {"removable fraction": "{:.1%}", "highest fraction walked": "{:.1%}"})


def tolerance(study: Study, lora_llms: list[str], fractions: list[float] | None, strategy: str, *,
              lora: dict | None = None, lora_steps: int | None = None) -> Tolerance:
    """Both SLAM models of each of ``lora_llms`` (frozen decoder, LoRA on it) pruned along their own optimal
    paths at ``fractions`` (None: every n up to half; []: no walk), healed with ``strategy``; their unpruned
    scores go to the results file."""
    rows, at_chance = [], []
    if lora_llms and (fractions is None or len(fractions) > 0):
        for name in lora_llms:
            for training, adapters in (("frozen", None), ("LoRA", lora)):
                run = _lora_run(study, name, adapters, lora_steps)
                walk = study.walk(run, study.speech_path(run), fractions, strategy=strategy)
                study.record_baseline(run, walk)
                if bad := study.unusable(walk):
                    at_chance.append(verdicts.AtChance(f"{name} ({training})", bad))
                rows.append({"decoder": name, "decoder training": training, "layers": run.num_layers,
                             **{f"WER {s} (%)": w for s, w in baseline_scores(walk).items()},
                             "removable fraction": study.removable(walk, run),
                             "highest fraction walked": float(walk.fraction.max())})
    return Tolerance(pd.DataFrame(rows), at_chance, fractions, strategy, study.settings.healing_steps)


def claim_2(maps: Maps, tolerance: Tolerance) -> verdicts.ClaimVerdict:
    """Claim 2 from the LoRA table of ``maps`` and the walks of ``tolerance`` (``verdicts.claim_2``)."""
    distances = {name: (r[FROZEN], r[LORA]) for name, r in maps._lora.iterrows()}
    walked = None
    if not tolerance.frame.empty:
        by_model = tolerance.frame.set_index(["decoder", "decoder training"])
        walked = {n: {"frozen": by_model.loc[(n, "frozen"), "removable fraction"],
                      "LoRA": by_model.loc[(n, "LoRA"), "removable fraction"],
                      "highest": by_model.loc[(n, "frozen"), "highest fraction walked"]}
                  for n in maps.lora_llms}
    how = tolerance.how()
    return verdicts.claim_2(distances, walked, tolerance.at_chance, how=how,
                            recipe=maps.study.settings.recipe,
                            variant=f"frozen vs LoRA decoder of {', '.join(maps.lora_llms)}, {how}")
