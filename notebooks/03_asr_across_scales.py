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
# # ASR across scales
#
# **Question.** Do larger decoders tolerate more pruning?
#
# **How.** For every speech LLM of the profile we train a SLAM model, measure its baseline WER on each
# evaluation set, prune along its optimal path with healing, and report the largest fraction of decoder
# layers that keeps the relative WER within +25 % on every set — the layout of the paper's Table 1 —
# then plot the removable fraction against the decoder's size.

# %% tags=["parameters", "hide-cell"]
corpus = {"size": "default"}  # corpus builder settings (the profile's top-level `corpus`)
device = "cpu"  # "cpu" or "cuda"
seed = 0
encoder = "whisper-base"  # frozen speech encoder: zoo name, local HF directory or hub id
speech_llms = ["smollm2-135m", "qwen2.5-coder-0.5b"]  # decoders of the SLAM models
train_steps = 3000  # SLAM training steps (projector, and LoRA where used), or {decoder: steps}; shared via the cache
ctc_steps = None  # CTC warm-start steps of the cpu recipe (shared by its models); None: the recipe default
whisper_window = "padded"  # Whisper features: "full" (30 s window), "padded" (+ 2 s of silence) or "trim"
recipe = "cpu"  # SLAM training: "paper" (as published) or "cpu" (CTC warm start, the LLM reads its output; book/method.md)
train_limit = 8192  # train on the first N utterances of the training split only; None uses all of it
eval_limit = 100  # utterances decoded per evaluation set and pruning level; None decodes all
max_new_tokens = None  # cap on the tokens decoded per utterance; None keeps the decoder's default (200)
pruned_fractions = None  # fractions of decoder layers removed (rounded to whole layers); None walks every n up to half

# %% [markdown]
# ## Method of this chapter
#
# For every decoder of the profile: the SLAM model (frozen encoder, trained projector, frozen decoder;
# shared through the cache with the other chapters), its optimal path from the angular distances of its
# own speech inputs (64 training utterances), then the decoder pruned along that path by
# $n = 1 \ldots \lceil L/2 \rceil$ layers (or the profile's `pruned_fractions`, rounded to whole layers),
# **without healing** (healing is chapter 2's subject), and greedy decoding of every evaluation set
# (`eval_limit` utterances each, at most `max_new_tokens` tokens per utterance). A level is acceptable when the relative
# WER change is at most +25 % on every set at once; the removable fraction is the largest acceptable $n/L$.

# %% tags=["hide-output"]
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from myst_nb import glue

from speechllm_redundancy import plots, sweep
from speechllm_redundancy.book import glue_verdict, settings_table
from speechllm_redundancy.cache import key_of
from speechllm_redundancy.ceilings import cached_gold_ceiling
from speechllm_redundancy.data import build_corpus
from speechllm_redundancy.evaluation import describe_unusable, no_better_than_chance
from speechllm_redundancy.layers import num_decoder_layers
from speechllm_redundancy.paths import artifact_path
from speechllm_redundancy.results import record_baseline
from speechllm_redundancy.training import trained_slam

torch.manual_seed(seed)
manifests = build_corpus(corpus)
eval_sets = [s for s in ("test-clean", "test-other", "dev-ood") if s in manifests]
evaluate = sweep.manifest_evaluator(manifests, "asr", limit=eval_limit, max_new_tokens=max_new_tokens)
chance = sweep.chance_scores(manifests, eval_sets, "asr", eval_limit)
walks, summary = {}, []
for llm in speech_llms:
    slam, run = trained_slam(encoder, llm, manifests["train"], steps=train_steps, seed=seed, recipe=recipe,
                             ctc_steps=ctc_steps, whisper_window=whisper_window, train_limit=train_limit, device=device)
    key = run.key
    matrix = sweep.speech_angles(slam, manifests["train"], key, limit=64)
    num_layers = num_decoder_layers(slam.llm)
    sizes = sweep.path_sizes(num_layers, pruned_fractions)
    walk = sweep.walk_path(slam, matrix.optimal_path(), sizes, eval_sets, evaluate,
                           artifact_path("sweeps", f"asr-{key}"), key=key_of(key, eval_limit, max_new_tokens))
    walks[llm] = walk.assign(model=llm)
    fraction = sweep.removable(walk, num_layers, "asr")
    summary.append({"model": llm, "layers": num_layers,
                    "parameters (M)": sum(p.numel() for p in slam.llm.parameters()) / 1e6,
                    "removable fraction": fraction, "layers removable": round(fraction * num_layers),
                    "unusable": no_better_than_chance(sweep.baseline_scores(walk), chance, "asr")})
summary = pd.DataFrame(summary)

# %% [markdown]
# ## Table 1 layout
#
# WER (%) of each decoder unpruned and at the largest acceptable pruning level (relative change in
# brackets), with the share of layers removed.

# %%
rows = []
for _, s in summary.iterrows():
    walk = walks[s["model"]]
    for n in sorted({0, int(s["layers removable"])}):
        at = walk[walk.n == n].set_index("set")
        row = {"model": s["model"], "pruned": f"{n}/{s['layers']} ({n / s['layers']:.1%})"}
        for name in eval_sets:
            score, delta = at.loc[name, "score"], at.loc[name, "delta"]
            row[name] = f"{score:.1f}" + (f" ({delta:+.1%})" if n else "")
        rows.append(row)
pd.DataFrame(rows).set_index(["model", "pruned"])

# %%
everything = pd.concat(walks.values(), ignore_index=True)
fig, ax = plt.subplots(figsize=(6.5, 4))
plots.delta_plot(everything[everything.n > 0], hue="model", ax=ax)
ax.set_title("Relative WER change along the pruning path (no healing)");

# %%
fig, ax = plt.subplots(figsize=(5, 3.5))
sns.scatterplot(data=summary, x="parameters (M)", y="removable fraction", hue="model", s=80, ax=ax)
ax.set(xscale="log", title="Removable fraction vs decoder size", ylim=(-0.02, 0.6));
ordered = summary.sort_values("parameters (M)")
glue("ch3_smallest", float(ordered["removable fraction"].iloc[0]), display=False)
glue("ch3_largest", float(ordered["removable fraction"].iloc[-1]), display=False)
summary.drop(columns="unusable").style.format({"parameters (M)": "{:.1f}", "removable fraction": "{:.1%}"})

# %% [markdown]
# The smallest decoder of this profile tolerates removing {glue:text}`ch3_smallest:.1%` of its layers, the
# largest {glue:text}`ch3_largest:.1%`.

# %% [markdown]
# ## This run
#
# The settings this page was executed with:

# %%
settings = dict(recipe=recipe, train_limit=train_limit, encoder=encoder, whisper_window=whisper_window,
                speech_llms=speech_llms, train_steps=train_steps, ctc_steps=ctc_steps, eval_limit=eval_limit,
                max_new_tokens=max_new_tokens, pruned_fractions=pruned_fractions, corpus=corpus,
                device=device, seed=seed)
settings_table(settings)

# %% [markdown]
# ## Verdict
#
# Claim 5 of the paper: larger decoders tolerate more pruning. Here (no healing) it holds when the removable
# fraction never decreases with decoder size and the largest decoder tolerates more than the smallest,
# among the decoders whose unpruned model does better than chance (`evaluation.chance_score`: the better
# of an empty output and another utterance's reference) on every set; with fewer than two of those it is
# not testable.

# %%
for llm, walk in walks.items():
    ceiling = {s: cached_gold_ceiling(llm, "asr", manifests[s], eval_limit, device=device) for s in eval_sets}
    record_baseline(llm, "frozen decoder", "asr", sweep.baseline_scores(walk), chance, ceiling, recipe=recipe)
usable = ordered[[not bad for bad in ordered["unusable"]]]
unusable = "; ".join(describe_unusable(r["model"], r["unusable"]) for _, r in ordered.iterrows() if r["unusable"])
variant = f"frozen decoders of {', '.join(ordered['model'])}, no healing"
if len(ordered) < 2:
    glue_verdict(5, None, "the profile has a single decoder", variant=variant, recipe=recipe)
elif len(usable) < 2:
    glue_verdict(5, None, unusable, variant=variant, recipe=recipe)
else:
    ordered = usable
    fractions = ordered["removable fraction"].tolist()
    holds5 = all(b >= a for a, b in zip(fractions, fractions[1:])) and fractions[-1] > fractions[0]
    listing = ", ".join(f"{m} {f:.0%}" for m, f in zip(ordered["model"], fractions))
    glue_verdict(5, holds5, f"removable fraction by size: {listing}", variant=variant, recipe=recipe)
