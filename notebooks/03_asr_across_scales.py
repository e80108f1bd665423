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
lora_llms = []  # decoders also walked with LoRA on the decoder (Table 1's LoRA row; chapter 1's models)
lora = {"r": 8, "alpha": 16, "dropout": 0.05}  # LoRA of those SLAM models (q, k, v, o projections)
lora_steps = None  # next-token steps of the LoRA models (None: train_steps)
healing = "both"  # after pruning: none, decoder, projector or both (the paper's Table 1: both, "joint healing")
healing_steps = 300  # training steps of each healing run
path_samples = 64  # validation (`dev`) utterances whose angles give each model's pruning path
eval_limit = 100  # utterances decoded per evaluation set and pruning level; None decodes all
max_new_tokens = None  # cap on the tokens decoded per utterance; None keeps the decoder's default (200)
pruned_fractions = None  # fractions of decoder layers removed (rounded to whole layers); None walks every n up to half

# %% [markdown]
# ## Method of this chapter
#
# For every decoder of the profile: the SLAM model (frozen encoder, trained projector, frozen decoder;
# shared through the cache with the other chapters) — and, for the decoders of `lora_llms`, the same with
# LoRA on the decoder (chapter 1's model) —, its optimal path from the angular distances of its own speech
# inputs (`path_samples` utterances of the validation split `dev`), then the decoder pruned along that path by
# $n = 1 \ldots \lceil L/2 \rceil$ layers (or the profile's `pruned_fractions`, rounded to whole layers),
# healed with `healing` for `healing_steps` steps (the paper's Table 1 heals decoder and projector jointly;
# chapter 2 compares the strategies), and greedy decoding of every evaluation set (`eval_limit` utterances
# each, at most `max_new_tokens` tokens per utterance). A level is acceptable when the relative WER change
# is at most +25 % on every set at once; the removable fraction is the largest acceptable $n/L$.

# %% tags=["hide-output"]
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from myst_nb import glue

from speechllm_redundancy import angles, plots
from speechllm_redundancy.book import glue_verdict, settings_table
from speechllm_redundancy.evaluation import describe_unusable
from speechllm_redundancy.experiments import Settings, Study

study = Study(Settings.of(globals()))
eval_sets = study.eval_sets("asr")
models = [(llm, None) for llm in speech_llms] + [(llm, lora) for llm in lora_llms]
runs, walks, summary = [], {}, []
for llm, adapters in models:
    run = study.slam(llm, lora=adapters, steps=lora_steps if adapters and lora_steps is not None else None)
    name = f"{llm} + LoRA" if adapters else llm
    walk = study.walk(run, study.speech_path(run), pruned_fractions, strategy=healing)
    runs.append(run)
    walks[name] = walk.assign(model=name)
    fraction = study.removable(walk, run)
    summary.append({"model": name, "layers": run.num_layers,
                    "parameters (M)": sum(p.numel() for p in run.model.llm.parameters()) / 1e6,
                    "removable fraction": fraction, "layers removable": round(fraction * run.num_layers),
                    "LoRA": bool(adapters), "unusable": study.unusable(walk)})
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
ax.set_title(f"Relative WER change along the pruning path ({healing} healing)");

# %%
fig, ax = plt.subplots(figsize=(5, 3.5))
sns.scatterplot(data=summary, x="parameters (M)", y="removable fraction", hue="model", s=80, ax=ax)
ax.set(xscale="log", title="Removable fraction vs decoder size", ylim=(-0.02, 0.6));
ordered = summary[~summary["LoRA"]].sort_values("parameters (M)")  # the scale comparison: frozen decoders
glue("ch3_smallest", float(ordered["removable fraction"].iloc[0]), display=False)
glue("ch3_largest", float(ordered["removable fraction"].iloc[-1]), display=False)
summary.drop(columns=["unusable", "LoRA"]).style.format({"parameters (M)": "{:.1f}", "removable fraction": "{:.1%}"})

# %% [markdown]
# The smallest decoder of this profile tolerates removing {glue:text}`ch3_smallest:.1%` of its layers, the
# largest {glue:text}`ch3_largest:.1%`.

# %% [markdown]
# ## Width of the low-distance region
#
# The paper observes that larger models have wider low-distance regions in their maps. For each frozen
# decoder's map (its speech on the path's validation utterances): the share of its blocks $(\ell, n)$ whose
# distance is at most $\tau$, for every threshold $\tau$ — a curve that lies higher for a wider region.

# %%
thresholds = [round(0.02 * i, 2) for i in range(26)]
frozen_runs = [run for run in runs if not run.lora]
width = pd.DataFrame([{"model": run.llm, "parameters (M)": sum(p.numel() for p in run.model.llm.parameters()) / 1e6,
                       "threshold τ": tau, "share of blocks with D ≤ τ": angles.low_distance_share(m, tau)}
                      for run in frozen_runs for m in [study.speech_angles(run)] for tau in thresholds])
fig, ax = plt.subplots(figsize=(5.5, 3.5))
sns.lineplot(data=width, x="threshold τ", y="share of blocks with D ≤ τ", hue="model", ax=ax)
ax.set_title("Low-distance region of each decoder's map");
TAU = 0.2
at_tau = width[width["threshold τ"] == TAU].sort_values("parameters (M)")
glue("ch3_tau", TAU, display=False)
glue("ch3_width_smallest", float(at_tau["share of blocks with D ≤ τ"].iloc[0]), display=False)
glue("ch3_width_largest", float(at_tau["share of blocks with D ≤ τ"].iloc[-1]), display=False)
at_tau.drop(columns="threshold τ").set_index("model").style.format("{:.1f}", subset=["parameters (M)"]).format(
    "{:.0%}", subset=["share of blocks with D ≤ τ"])

# %% [markdown]
# At $\tau$ = {glue:text}`ch3_tau:.2f`, {glue:text}`ch3_width_smallest:.0%` of the smallest decoder's blocks
# and {glue:text}`ch3_width_largest:.0%` of the largest decoder's lie in the low-distance region.

# %% [markdown]
# ## This run
#
# The settings this page was executed with:

# %%
settings_table(study.settings.as_dict() | dict(speech_llms=speech_llms, lora_llms=lora_llms, lora=lora,
                                              lora_steps=lora_steps, healing=healing,
                                              pruned_fractions=pruned_fractions))

# %% [markdown]
# ## Verdict
#
# Claim 5 of the paper: larger decoders tolerate more pruning. Here (after `healing`) it holds when the removable
# fraction never decreases with decoder size and the largest decoder tolerates more than the smallest,
# among the frozen decoders whose unpruned model does better than chance (`evaluation.chance_score`: the better
# of an empty output and another utterance's reference) on every set; with fewer than two of those it is
# not testable.

# %%
for run, walk in zip(runs, walks.values()):
    study.record_baseline(run, walk)
usable = ordered[[not bad for bad in ordered["unusable"]]]
unusable = "; ".join(describe_unusable(r["model"], r["unusable"]) for _, r in ordered.iterrows() if r["unusable"])
how = f"{healing} healing, {healing_steps} steps" if healing != "none" else "no healing"
variant = f"frozen decoders of {', '.join(ordered['model'])}, {how}"
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
