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
pruned_fractions = [0.2, 0.4]  # levels of the no-healing walks of frozen vs LoRA decoders; None walks every n up to half, [] skips
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
import torch
from IPython.display import display
from myst_nb import glue

from speechllm_redundancy import angles, plots, sweep
from speechllm_redundancy.book import glue_verdict, settings_table
from speechllm_redundancy.cache import key_of
from speechllm_redundancy.ceilings import cached_gold_ceiling
from speechllm_redundancy.data import build_corpus, read_manifest
from speechllm_redundancy.evaluation import describe_unusable, no_better_than_chance
from speechllm_redundancy.layers import num_decoder_layers
from speechllm_redundancy.paths import artifact_path
from speechllm_redundancy.results import record_baseline
from speechllm_redundancy.training import trained_slam

torch.manual_seed(seed)
manifests = build_corpus(corpus)
utterances = read_manifest(manifests["test-clean"])[:angle_samples]
sentences = [u.text for u in utterances]
glue("ch1_samples", len(sentences), display=False)
pd.DataFrame({"transcript": sentences[:5]})

# %% tags=["hide-output"]
def speech_model(llm: str, with_lora: bool = False):
    """The SLAM model of decoder `llm` (frozen decoder, or LoRA on it), shared with the other chapters."""
    steps = lora_steps if with_lora and lora_steps is not None else train_steps
    return trained_slam(encoder, llm, manifests["train"], steps=steps, seed=seed, recipe=recipe,
                        ctc_steps=ctc_steps, whisper_window=whisper_window, train_limit=train_limit,
                        lora=lora if with_lora else None, device=device)


def speech_matrix(llm: str, with_lora: bool = False):
    """D(l, n) of the SLAM model with decoder `llm` (frozen, or with LoRA), on the test audio (cached)."""
    slam, run = speech_model(llm, with_lora)
    return angles.cached_angles(
        artifact_path("angles", f"speech-{key_of(run.key, sentences)}.json"),
        lambda: angles.measure_angles(slam, angles.SpeechBatches(slam, manifests["test-clean"], limit=angle_samples)))


text = {name: sweep.text_angles(name, sentences, device) for name in text_llms}
speech = {name: speech_matrix(name) for name in speech_llms}

# %% [markdown]
# ## Text-only input
#
# Each heatmap shows $D(\ell, n)$ for one LLM fed the transcripts as plain text; the red line is the
# optimal path $\ell^*(n)$, the block of $n$ layers whose input and output are closest.

# %%
plots.angle_heatmaps({f"{name} (text)": m for name, m in text.items()});

# %% [markdown]
# ## Speech input (SLAM, frozen decoder)
#
# The same decoders inside SLAM models (the profile's frozen speech encoder, a trained projector, the
# decoder frozen), fed the audio of the same utterances. Under the `cpu` recipe the projector is a CTC warm
# start whose labels the decoder reads as token embeddings, after 8 trained soft-prompt vectors
# (book/method.md): the speech arrives as the words the CTC heard, so this map is partly a text map by
# construction — which is what claim 1 asks about, and why the verdict names the recipe.

# %%
plots.angle_heatmaps({f"{name} (SLAM, speech)": m for name, m in speech.items()});

# %% [markdown]
# ## Text versus speech
#
# For each decoder: the mean $|\Delta D|$ over all blocks between its text and speech maps, the share of
# block sizes $n$ whose optimal start $\ell^*(n)$ is the same, and the mean overlap (Jaccard) of the layer
# sets the two paths remove.

# %%
rows = []
for name, s in speech.items():
    t = text[name] if name in text else sweep.text_angles(name, sentences, device)
    rows.append({"decoder": name, "layers": s.num_layers, **angles.compare(t, s)})
comparison = pd.DataFrame(rows).set_index("decoder")
for name, r in comparison.iterrows():
    fig, ax = plt.subplots(figsize=(5, 3.5))
    plots.paths_plot({"text": text[name] if name in text else sweep.text_angles(name, sentences, device), "speech": speech[name]}, ax=ax)
    ax.set_title(f"Optimal pruning path of {name}")
mean_delta, agreement = comparison["mean_abs_difference"].mean(), comparison["path_agreement"].mean()
glue("ch1_mean_abs_delta", float(mean_delta), display=False)
glue("ch1_path_agreement", float(agreement), display=False)
comparison.style.format({"mean_abs_difference": "{:.3f}", "path_agreement": "{:.0%}",
                         "mean_removed_overlap": "{:.0%}"})

# %% [markdown]
# Averaged over the decoders, text and speech maps differ by a mean $|\Delta D|$ of
# {glue:text}`ch1_mean_abs_delta:.3f`, and their optimal paths pick the same block for
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
# the adapters only, `lora_steps` steps; the `paper` recipe trains them with the projector). Its map on the same audio,
# then, for both models, the mean distance $D(\ell^*(n), n)$ of the block each would prune (its own optimal
# path, $n = 1 \ldots L-1$).

# %%
lora_speech = {name: speech_matrix(name, with_lora=True) for name in lora_llms}
if lora_speech:
    plots.angle_heatmaps({f"{name} (SLAM + LoRA, speech)": m for name, m in lora_speech.items()})


def pruned_block_distance(m: angles.AngleMatrix) -> float:
    """Mean D(l*(n), n) over the block sizes: how close the blocks on the optimal path are."""
    return float(np.mean([m.distance(start, n) for n, start in m.optimal_path().items()]))


lora_rows = []
for name, m in lora_speech.items():
    frozen = speech[name] if name in speech else speech_matrix(name)
    lora_rows.append({"decoder": name, "pruned-block distance, frozen": pruned_block_distance(frozen),
                      "pruned-block distance, LoRA": pruned_block_distance(m),
                      "paths agree": angles.path_agreement(frozen, m)})
lora_table = pd.DataFrame(lora_rows, columns=["decoder", "pruned-block distance, frozen",
                                              "pruned-block distance, LoRA", "paths agree"]).set_index("decoder")
lora_table.style.format({"pruned-block distance, frozen": "{:.3f}", "pruned-block distance, LoRA": "{:.3f}",
                         "paths agree": "{:.0%}"})

# %% [markdown]
# Whether LoRA also raises the pruning tolerance: both models of each of those decoders pruned along their
# own optimal paths (from the speech of 64 training utterances, as in chapter 3) at the `pruned_fractions`
# levels, **without healing**, and every evaluation set decoded (`eval_limit` utterances each). The
# removable fraction is the largest level whose relative WER change stays within +25 % on every set.

# %%
tolerance_rows = []
if lora_llms and (pruned_fractions is None or len(pruned_fractions) > 0):
    eval_sets = [s for s in ("test-clean", "test-other", "dev-ood") if s in manifests]
    evaluate = sweep.manifest_evaluator(manifests, "asr", limit=eval_limit, max_new_tokens=max_new_tokens)
    chance = sweep.chance_scores(manifests, eval_sets, "asr", eval_limit)
    for name in lora_llms:
        for variant, with_lora in (("frozen", False), ("LoRA", True)):
            slam, run = speech_model(name, with_lora)
            key = run.key
            num_layers = num_decoder_layers(slam.llm)
            walk = sweep.walk_path(slam, sweep.speech_angles(slam, manifests["train"], key).optimal_path(),
                                   sweep.path_sizes(num_layers, pruned_fractions), eval_sets, evaluate,
                                   artifact_path("sweeps", f"asr-{key}"), key=key_of(key, eval_limit, max_new_tokens))
            base = sweep.baseline_scores(walk)
            tolerance_rows.append({"decoder": name, "decoder training": variant, "layers": num_layers,
                                   **{f"WER {s} (%)": base[s] for s in eval_sets},
                                   "removable fraction": sweep.removable(walk, num_layers, "asr"),
                                   "unusable": no_better_than_chance(base, chance, "asr")})
tolerance = pd.DataFrame(tolerance_rows)
if not tolerance.empty:
    display(tolerance.drop(columns="unusable").set_index(["decoder", "decoder training"]).style.format(
        {c: "{:.1f}" for c in tolerance.columns if c.startswith("WER")} | {"removable fraction": "{:.1%}"}))

# %% [markdown]
# ## This run
#
# The settings this page was executed with:

# %%
settings = dict(recipe=recipe, train_limit=train_limit, encoder=encoder, whisper_window=whisper_window,
                speech_llms=speech_llms, text_llms=text_llms, angle_samples=angle_samples,
                train_steps=train_steps, lora_llms=lora_llms, lora=lora, lora_steps=lora_steps, pruned_fractions=pruned_fractions,
                ctc_steps=ctc_steps, eval_limit=eval_limit, max_new_tokens=max_new_tokens, corpus=corpus,
                device=device, seed=seed)
settings_table(settings)

# %% [markdown]
# ## Verdicts
#
# Claims 1–3 of the paper (text and speech maps nearly identical with the same optimal path; LoRA lowers
# the distances of pruned blocks without raising pruning tolerance; the smallest distances lie in deep
# blocks, the largest in blocks that include the last layer). Claim 1 holds here when the paths agree on at
# least 80 % of block sizes and the mean $|\Delta D|$ is below 0.05; claim 3 when both shares above are at
# least two thirds. Claim 2 holds when, for every decoder of `lora_llms`, LoRA lowers the mean distance of
# the blocks on the optimal path and its removable fraction (no healing) is not larger than the frozen
# decoder's; the second half is not testable when an unpruned model does no better on some set than
# chance (`evaluation.chance_score`: the better of an empty output and another utterance's reference).

# %%
for _, r in tolerance.iterrows():  # the unpruned models of the tolerance walks, for the results file
    ceiling = {s: cached_gold_ceiling(r["decoder"], "asr", manifests[s], eval_limit, device=device)
               for s in eval_sets}
    record_baseline(r["decoder"], f"{r['decoder training']} decoder", "asr",
                    {s: r[f"WER {s} (%)"] for s in eval_sets}, chance, ceiling, recipe=recipe)
holds1 = agreement >= 0.8 and mean_delta < 0.05
glue_verdict(1, holds1, f"text vs speech mean |ΔD| = {mean_delta:.3f}, optimal paths agree on {agreement:.0%} of "
                        "block sizes", variant=f"text maps vs frozen-decoder SLAM maps of {', '.join(speech_llms)}",
             recipe=recipe)
lora_variant = f"frozen vs LoRA decoder of {', '.join(lora_llms)}, no healing"
if lora_table.empty:
    glue_verdict(2, None, "the profile trains no SLAM model with LoRA on the decoder (lora_llms is empty)",
                 variant=lora_variant, recipe=recipe)
else:
    lowers = bool((lora_table["pruned-block distance, LoRA"] < lora_table["pruned-block distance, frozen"]).all())
    distances = ", ".join(f"{n} {r['pruned-block distance, frozen']:.3f} → {r['pruned-block distance, LoRA']:.3f}"
                          for n, r in lora_table.iterrows())
    first_half = (f"first half {'holds' if lowers else 'does not hold'} (pruned-block distance frozen → LoRA: "
                  f"{distances})")
    if tolerance.empty:  # a claim whose first half fails does not hold, whatever the second
        glue_verdict(2, None if lowers else False, f"{first_half}; pruning tolerance not tested "
                     "(pruned_fractions is empty)", variant=lora_variant, recipe=recipe)
    elif unusable := [describe_unusable(f"{r['decoder']} ({r['decoder training']})", r["unusable"])
                      for _, r in tolerance.iterrows() if r["unusable"]]:
        glue_verdict(2, None if lowers else False, f"{first_half}; pruning tolerance not testable at this "
                     f"scale: {'; '.join(unusable)}", variant=lora_variant, recipe=recipe)
    else:
        removable = tolerance.pivot(index="decoder", columns="decoder training", values="removable fraction")
        not_raised = bool((removable["LoRA"] <= removable["frozen"]).all())
        fractions = ", ".join(f"{n} {r['frozen']:.0%} → {r['LoRA']:.0%}" for n, r in removable.iterrows())
        glue_verdict(2, lowers and not_raised, f"LoRA {'lowers' if lowers else 'does not lower'} the pruned-block "
                     f"distance (frozen → LoRA: {distances}) and {'does not raise' if not_raised else 'raises'} "
                     f"the removable fraction without healing (frozen → LoRA: {fractions})",
                     variant=lora_variant, recipe=recipe)
holds3 = deep_share >= 2 / 3 and last_share >= 2 / 3
glue_verdict(3, holds3, f"optimal block in the deeper half for {deep_share:.0%} of block sizes; the block ending at "
                        f"the last layer is the farthest for {last_share:.0%}",
             variant=f"text maps of {', '.join(text_llms)} and frozen-decoder SLAM maps of {', '.join(speech_llms)}",
             recipe=recipe)
