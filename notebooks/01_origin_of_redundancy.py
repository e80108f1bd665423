# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python (speechllm-redundancy)
#     language: python
#     name: speechllm-redundancy
# ---

# %% [markdown]
# # Origin of redundancy
#
# **Question.** When a decoder-only LLM becomes the decoder of a speech LLM, where does the redundancy
# of its layers come from: from the speech task, or from the pretrained LLM itself?
#
# **How.** We measure the angular distance $D(\ell, n)$ between the hidden states entering and leaving
# each block of $n$ layers that follows the first $\ell$ (see {doc}`../book/method`) in four settings:
# text-only input to the LLM, a SLAM model with the decoder frozen, a SLAM model with LoRA on the
# decoder, and an LLM of a second family. Each heatmap carries its optimal pruning path $\ell^*(n)$.
# We then compare text and speech: the mean $|\Delta D|$ and how often the two paths pick the same block.
#
# The (folded) cell below declares this chapter's parameters with defaults; papermill adds the profile's
# values in the cell after it.

# %% tags=["parameters", "hide-cell"]
corpus = {"size": "default"}  # corpus builder settings (the profile's top-level `corpus`)
device = "cpu"  # "cpu" or "cuda"
seed = 0
encoder = "whisper-base"  # frozen speech encoder: zoo name, local HF directory or hub id
speech_llms = ["smollm2-135m", "qwen2.5-coder-0.5b"]  # decoders of the SLAM models
train_steps = 3000  # SLAM training steps (projector, and LoRA where used), or {decoder: steps}; shared via the cache
ctc_steps = None  # CTC warm-start steps of the cpu recipe (shared by its models); None: the recipe default
text_llms = ["qwen2.5-coder-1.5b", "smollm2-135m"]  # LLMs measured on text-only input (two families)
angle_samples = 200  # utterances / sentences averaged per distance matrix
whisper_window = "padded"  # Whisper features: "full" (30 s window), "padded" (+ 2 s of silence) or "trim"
recipe = "cpu"  # SLAM training: "paper" (as published) or "cpu" (CTC warm start, the LLM reads its output; book/method.md)
train_limit = 8192  # train on the first N utterances of the training split only; None uses all of it
lora_llms = ["smollm2-135m"]  # decoders also trained with LoRA on the decoder (claim 2); [] skips claim 2
lora = {"r": 8, "alpha": 16, "dropout": 0.05}  # LoRA of those SLAM models (q, k, v, o projections)
lora_steps = None  # next-token steps of the LoRA models (None: train_steps)
pruned_fractions = [0.2, 0.4]  # levels of the walks of frozen vs LoRA decoders; None walks every n up to half, [] skips
healing = "both"  # healing after pruning in those walks (the paper's: joint decoder + projector)
healing_steps = 300  # training steps of each healing run
path_samples = 64  # validation (`dev`) utterances whose angles give each model's pruning path
eval_limit = 100  # utterances decoded per evaluation set and pruning level in those walks; None decodes all
max_new_tokens = None  # cap on the tokens decoded per utterance; None keeps the decoder's default (200)

# %% [markdown]
# ## Inputs
#
# Text and speech are the same utterances: the transcripts of the first `angle_samples` utterances of the
# `test-clean` split feed the LLMs as text; their audio feeds the SLAM models (speech + prompt, read at the
# position where the transcript would start). Every distance matrix is cached on disk under a key of its
# inputs, and the SLAM models are the shared trained ones of the cache.

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display
from myst_nb import glue

from speechllm_redundancy import angles, plots
from speechllm_redundancy.book import glue_verdict, settings_table
from speechllm_redundancy.evaluation import describe_unusable
from speechllm_redundancy.experiments import Settings, Study
from speechllm_redundancy.sweep import baseline_scores
from speechllm_redundancy.verdicts import lora_claim, tolerance_not_raised

study = Study(Settings.of(globals()))
sentences = study.references("test-clean", "asr", angle_samples)
glue("ch1_samples", len(sentences), display=False)
pd.DataFrame({"transcript": sentences[:5]})

# %% tags=["hide-output"]
def speech_model(llm: str, with_lora: bool = False):
    """The SLAM model of decoder `llm` (frozen decoder, or LoRA on it), shared with the other chapters."""
    if not with_lora:
        return study.slam(llm)
    return study.slam(llm, lora=lora, steps=lora_steps)


def speech_matrix(llm: str, with_lora: bool = False) -> angles.AngleMatrix:
    """D(l, n) of the SLAM model with decoder `llm` (frozen, or with LoRA), on the test audio (cached)."""
    return study.speech_angles(speech_model(llm, with_lora), "test-clean", angle_samples)


text = {name: study.text_angles(name, sentences) for name in text_llms}
speech, gold, unusable1 = {}, {}, []  # each frozen SLAM model loaded once: its map, its control, its baseline
for name in speech_llms:
    run = speech_model(name)
    speech[name] = study.speech_angles(run, "test-clean", angle_samples)
    gold[name] = study.gold_text_angles(run, "test-clean", angle_samples)  # claim 1's control (below)
    if bad := study.unusable(study.baseline(run)):
        unusable1.append(describe_unusable(name, bad))
    del run
lora_speech = {name: speech_matrix(name, with_lora=True) for name in lora_llms}

# %% [markdown]
# ## The distance maps
#
# Each heatmap shows $D(\ell, n)$ on one colour scale for all panels; the red line is the optimal path
# $\ell^*(n)$, the block of $n$ layers whose input and output are closest. First the decoder of the paper's
# figure 1 fed the transcripts as plain **text**, then the same decoder inside a **SLAM** model (the
# profile's frozen speech encoder, a trained projector, the decoder frozen) fed the audio of the same
# utterances, then that SLAM model with **LoRA** on the decoder (where `lora_llms` has it), then the other
# decoders of the profile (a second family). Under the `cpu` recipe the projector is a CTC warm start whose
# labels the decoder reads as token embeddings, after 8 trained soft-prompt vectors (book/method.md): the
# speech arrives as the words the CTC heard, so a SLAM map is partly a text map by construction — which is
# what claim 1 asks about, and why the verdict names the recipe.

# %%
first = (lora_llms or speech_llms)[0]
panels = {f"{first} (text)": text[first] if first in text else study.text_angles(first, sentences),
          f"{first} (SLAM, speech)": speech[first] if first in speech else speech_matrix(first)}
if first in lora_speech:
    panels[f"{first} (SLAM + LoRA, speech)"] = lora_speech[first]
panels |= {f"{name} (text)": m for name, m in text.items() if name != first}
panels |= {f"{name} (SLAM, speech)": m for name, m in speech.items() if name != first}
panels |= {f"{name} (SLAM + LoRA, speech)": m for name, m in lora_speech.items() if name != first}
plots.angle_heatmaps(panels, ncols=min(4, len(panels)));

# %% [markdown]
# ## Text versus speech
#
# The paper compares a decoder's map on text with its map inside the SLAM model on speech. The two differ in
# more than the modality: plain text is read at the last transcript token without the chat template, speech
# at the end of the SLAM prompt. The clean control puts the **gold transcript's token embeddings in the
# speech slot** of the same SLAM model (same layout, soft prompt and read position), so that only the input
# differs; claim 1's verdict compares that map with the speech map. For each decoder: the mean $|\Delta D|$
# over all blocks, the share of block sizes $n$ whose optimal start $\ell^*(n)$ is the same, and the mean
# overlap (Jaccard) of the layer sets the two paths remove — for the control, and for plain text (the
# paper's comparison).

# %%
rows = []
for name, s in speech.items():
    plain = text[name] if name in text else study.text_angles(name, sentences)
    for reference, t in (("gold transcript in the SLAM layout", gold[name]), ("plain text", plain)):
        rows.append({"decoder": name, "speech compared with": reference, "layers": s.num_layers,
                     **angles.compare(t, s)})
    fig, ax = plt.subplots(figsize=(5, 3.5))
    plots.paths_plot({"gold transcript, SLAM layout": gold[name], "plain text": plain, "speech": s}, ax=ax)
    ax.set_title(f"Optimal pruning path of {name}")
comparison = pd.DataFrame(rows).set_index(["decoder", "speech compared with"])
control = comparison.xs("gold transcript in the SLAM layout", level="speech compared with")
mean_delta, agreement = control["mean_abs_difference"].mean(), control["path_agreement"].mean()
glue("ch1_mean_abs_delta", float(mean_delta), display=False)
glue("ch1_path_agreement", float(agreement), display=False)
comparison.rename(columns={"mean_abs_difference": "mean |ΔD|", "path_agreement": "same l*(n)",
                           "mean_removed_overlap": "removed-layer overlap"}).style.format(
    {"mean |ΔD|": "{:.3f}", "same l*(n)": "{:.0%}", "removed-layer overlap": "{:.0%}"})

# %% [markdown]
# Averaged over the decoders, the speech maps differ from the gold-transcript control by a mean
# $|\Delta D|$ of {glue:text}`ch1_mean_abs_delta:.3f`, and their optimal paths pick the same block for
# {glue:text}`ch1_path_agreement:.0%` of the block sizes.
#
# ## Where the low-distance blocks lie
#
# For each map: the share of block sizes whose optimal block starts in the deeper half of the possible
# starts, and the share whose block ending at the last layer has the *largest* distance of its column.

# %%
def depth_profile(m: angles.AngleMatrix) -> dict:
    L, path = m.num_layers, m.optimal_path()
    deep = [path[n] >= (L - n) / 2 for n in path]
    last_max = [np.nanargmax(m.distances[: L - n + 1, n]) == L - n for n in path]
    return {"layers": L, "optimal block in deeper half": float(np.mean(deep)),
            "block with last layer is the farthest": float(np.mean(last_max))}


maps = {**{f"{n} (text)": m for n, m in text.items()}, **{f"{n} (speech)": m for n, m in speech.items()}}
depth = pd.DataFrame({name: depth_profile(m) for name, m in maps.items()}).T
deep_share, last_share = depth["optimal block in deeper half"].mean(), depth["block with last layer is the farthest"].mean()
glue("ch1_deep_share", float(deep_share), display=False)
glue("ch1_last_share", float(last_share), display=False)
depth.style.format({"layers": "{:.0f}", "optimal block in deeper half": "{:.0%}",
                    "block with last layer is the farthest": "{:.0%}"})

# %% [markdown]
# Over all maps, the optimal block lies in the deeper half for {glue:text}`ch1_deep_share:.0%` of the block
# sizes, and the block that ends at the last layer is the farthest for {glue:text}`ch1_last_share:.0%`.
#
# ## LoRA on the decoder
#
# For the decoders in `lora_llms`, a second SLAM model is trained with LoRA on the decoder's attention
# projections (q, k, v, o) on the same data (the `cpu` recipe keeps its warm start's projector fixed and trains
# the adapters only, `lora_steps` steps; the `paper` recipe trains them with the projector); its map on the
# same audio is in the figure above. For the decoder's text map and both SLAM models: the mean distance
# $D(\ell^*(n), n)$ of the block each would prune (its own optimal path, $n = 1 \ldots L-1$), the paper's
# number for comparing them.

# %%
lora_rows = []
for name, m in lora_speech.items():
    frozen = speech[name] if name in speech else speech_matrix(name)
    as_text = text[name] if name in text else study.text_angles(name, sentences)
    lora_rows.append({"decoder": name, "pruned-block distance, text": angles.pruned_block_distance(as_text),
                      "pruned-block distance, frozen": angles.pruned_block_distance(frozen),
                      "pruned-block distance, LoRA": angles.pruned_block_distance(m),
                      "paths agree": angles.path_agreement(frozen, m)})
lora_table = pd.DataFrame(lora_rows, columns=["decoder", "pruned-block distance, text", "pruned-block distance, frozen",
                                              "pruned-block distance, LoRA", "paths agree"]).set_index("decoder")
lora_table.style.format({c: "{:.3f}" for c in lora_table.columns if c.startswith("pruned")} | {"paths agree": "{:.0%}"})

# %% [markdown]
# Whether LoRA also raises the pruning tolerance: both models of each of those decoders pruned along their
# own optimal paths (from the speech of `path_samples` validation utterances, as in chapter 3) at the
# `pruned_fractions` levels, healed with `healing` for `healing_steps` steps (the paper's joint healing), and
# every evaluation set decoded (`eval_limit` utterances each). The removable fraction is the largest level
# whose relative WER change stays within +25 % on every set.

# %%
tolerance_rows, tolerance_runs = [], []
if lora_llms and (pruned_fractions is None or len(pruned_fractions) > 0):
    eval_sets = study.eval_sets("asr")
    for name in lora_llms:
        for variant, with_lora in (("frozen", False), ("LoRA", True)):
            run = speech_model(name, with_lora)
            walk = study.walk(run, study.speech_path(run), pruned_fractions, strategy=healing)
            tolerance_runs.append((run, walk))
            tolerance_rows.append({"decoder": name, "decoder training": variant, "layers": run.num_layers,
                                   **{f"WER {s} (%)": w for s, w in baseline_scores(walk).items()},
                                   "removable fraction": study.removable(walk, run),
                                   "highest level walked": float(walk.fraction.max()),
                                   "unusable": study.unusable(walk)})
tolerance = pd.DataFrame(tolerance_rows)
if not tolerance.empty:
    display(tolerance.drop(columns="unusable").set_index(["decoder", "decoder training"]).style.format(
        {c: "{:.1f}" for c in tolerance.columns if c.startswith("WER")}
        | {"removable fraction": "{:.1%}", "highest level walked": "{:.1%}"}))

# %% [markdown]
# ## This run
#
# The settings this page was executed with:

# %%
settings_table(study.settings.as_dict() | dict(speech_llms=speech_llms, text_llms=text_llms,
                                              angle_samples=angle_samples, lora_llms=lora_llms, lora=lora,
                                              lora_steps=lora_steps, pruned_fractions=pruned_fractions,
                                              healing=healing))

# %% [markdown]
# ## Verdicts
#
# Claims 1–3 of the paper (text and speech maps nearly identical with the same optimal path; LoRA lowers
# the distances of pruned blocks without raising pruning tolerance; the smallest distances lie in deep
# blocks, the largest in blocks that include the last layer). Claim 1 holds here when the speech maps and
# their gold-transcript controls agree on the optimal block for at least 80 % of block sizes and differ by
# a mean $|\Delta D|$ below 0.05; it is not testable when a SLAM model does no better than chance on some
# evaluation set (its "speech" map would then be of inputs it does not understand), and under the `cpu`
# recipe it is partly true by construction (the decoder reads the CTC's words as token embeddings). Claim 3
# holds when both shares above are at least two thirds. Claim 2 holds when, for every decoder of `lora_llms`, LoRA lowers the mean distance of
# the blocks on the optimal path and its removable fraction (after `healing`) is not larger than the frozen
# decoder's (`verdicts.lora_claim`). The second half is not testable when an unpruned model does no better
# on some set than chance (`evaluation.chance_score`: the better of an empty output and another
# utterance's reference), and not informative when both models remove nothing or both reach the highest
# level walked: the walk cannot tell them apart.

# %%
for run, walk in tolerance_runs:  # the unpruned models of the tolerance walks, for the results file
    study.record_baseline(run, walk)
finding1 = (f"speech vs gold-transcript control (same layout and position): mean |ΔD| = {mean_delta:.3f}, optimal "
            f"paths agree on {agreement:.0%} of block sizes")
variant1 = f"frozen-decoder SLAM maps of {', '.join(speech_llms)} vs their gold-transcript controls"
if unusable1:
    glue_verdict(1, None, f"{'; '.join(unusable1)}; for the record, {finding1}", variant=variant1, recipe=recipe)
else:
    glue_verdict(1, agreement >= 0.8 and mean_delta < 0.05, finding1, variant=variant1, recipe=recipe)
how = f"{healing} healing, {healing_steps} steps" if healing != "none" else "no healing"
lora_variant = f"frozen vs LoRA decoder of {', '.join(lora_llms)}, {how}"
if lora_table.empty:
    glue_verdict(2, None, "the profile trains no SLAM model with LoRA on the decoder (lora_llms is empty)",
                 variant=lora_variant, recipe=recipe)
else:
    lowers = bool((lora_table["pruned-block distance, LoRA"] < lora_table["pruned-block distance, frozen"]).all())
    distances = ", ".join(f"{n} {r['pruned-block distance, frozen']:.3f} → {r['pruned-block distance, LoRA']:.3f}"
                          for n, r in lora_table.iterrows())
    first_half = (f"LoRA {'lowers' if lowers else 'does not lower'} the pruned-block distance (frozen → LoRA: "
                  f"{distances})")
    if tolerance.empty:  # a claim whose first half fails does not hold, whatever the second
        glue_verdict(2, None if lowers else False, f"{first_half}; pruning tolerance not tested "
                     "(pruned_fractions is empty)", variant=lora_variant, recipe=recipe)
    elif unusable := [describe_unusable(f"{r['decoder']} ({r['decoder training']})", r["unusable"])
                      for _, r in tolerance.iterrows() if r["unusable"]]:
        glue_verdict(2, None if lowers else False, f"{first_half}; pruning tolerance not testable at this "
                     f"scale: {'; '.join(unusable)}", variant=lora_variant, recipe=recipe)
    else:
        by_decoder = tolerance.set_index(["decoder", "decoder training"])
        not_raised = {n: tolerance_not_raised(by_decoder.loc[(n, "frozen"), "removable fraction"],
                                              by_decoder.loc[(n, "LoRA"), "removable fraction"],
                                              by_decoder.loc[(n, "frozen"), "highest level walked"])
                      for n in lora_llms}
        fractions = ", ".join(f"{n} {by_decoder.loc[(n, 'frozen'), 'removable fraction']:.0%} → "
                              f"{by_decoder.loc[(n, 'LoRA'), 'removable fraction']:.0%}" for n in lora_llms)
        second_half = ("the comparison of removable fractions is not informative (both none, or both the "
                       "highest level walked)" if None in not_raised.values() else
                       f"{'does not raise' if all(not_raised.values()) else 'raises'} the removable fraction")
        glue_verdict(2, lora_claim(lowers, not_raised), f"{first_half}; {second_half} (frozen → LoRA, {how}: "
                     f"{fractions})", variant=lora_variant, recipe=recipe)
holds3 = deep_share >= 2 / 3 and last_share >= 2 / 3
glue_verdict(3, holds3, f"optimal block in the deeper half for {deep_share:.0%} of block sizes; the block ending at "
                        f"the last layer is the farthest for {last_share:.0%}",
             variant=f"text maps of {', '.join(text_llms)} and frozen-decoder SLAM maps of {', '.join(speech_llms)}",
             recipe=recipe)
