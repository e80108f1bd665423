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
# # Transfer to speech translation
#
# **Question.** Is the pruning path found for speech recognition also good for speech translation, or does
# each task need its own measurement?
#
# **How.** We train SLAM models for English→German and French→English speech translation, prune them at
# several levels along two paths — the one measured on the translation model (AST-derived) and the one
# measured on the recognition model (ASR-derived) — and report BLEU per level in the layout of the
# paper's Table 2. A level is acceptable while BLEU drops by at most 10 % relative.

# %% tags=["parameters", "hide-cell"]
corpus = {"size": "default"}  # corpus builder settings (the profile's top-level `corpus`)
device = "cpu"  # "cpu" or "cuda"
seed = 0
encoder = "whisper-base"  # speech encoder of the ASR models (the ASR-derived path): as in chapter 3
speech_llms = ["smollm2-135m", "qwen2.5-coder-0.5b"]  # decoders of the SLAM models
train_steps = 3000  # SLAM training steps (projector, and LoRA where used), or {decoder: steps}; shared via the cache
ctc_steps = None  # CTC warm-start steps of the cpu recipe (shared by its models); None: the recipe default
whisper_window = "padded"  # Whisper features: "full" (30 s window), "padded" (+ 2 s of silence) or "trim"
recipe = "cpu"  # SLAM training: "paper" (as published) or "cpu" (CTC warm start, the LLM reads its output; book/method.md)
train_limit = 8192  # ASR models: the first N utterances of the training split only; None uses all of it
ast_train_limit = 2048  # translation models: the first N utterances of each direction's training split
ast_encoder = "whisper-base"  # speech encoder of the translation models (Whisper for French input)
directions = ["en-de", "fr-en"]  # translation directions (corpus splits <direction>-train / -test)
pruned_fractions = [0.1, 0.2, 0.3, 0.4]  # fractions of decoder layers removed (rounded to whole layers)
eval_limit = 100  # test utterances decoded per direction and pruning level; None decodes all
max_new_tokens = None  # cap on the tokens decoded per utterance; None keeps the decoder's default (200)
healing = "none"  # after pruning: none, decoder, projector or both (the paper's Table 2 heals both)
healing_steps = 300  # training steps of each healing run (unused without healing)

# %% [markdown]
# ## Method of this chapter
#
# For every decoder of the profile and every translation direction:
#
# 1. the **AST model**: frozen `ast_encoder`, trained projector, frozen decoder, trained on the direction's
#    training split with its translation prompt; its **AST-derived path** comes from the angular distances
#    of its own inputs (64 training utterances, translation prompt);
# 2. the **ASR model** of the same decoder, exactly as chapter 3 trains it (shared through the cache); its
#    **ASR-derived path** comes from 64 recognition training utterances;
# 3. the AST model pruned along each path at every level of `pruned_fractions` (rounded to whole layers),
#    healed with `healing`, and scored by greedy decoding of `eval_limit` test utterances (at most
#    `max_new_tokens` tokens each; corpus BLEU).
#
# Where the two paths remove the same block, the pruned models are the same and so is their BLEU (the
# cached point is reused). A level is acceptable while ΔBLEU ≥ −10 % relative to the unpruned model.

# %% tags=["hide-output"]
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from myst_nb import glue

from speechllm_redundancy import angles, plots, sweep
from speechllm_redundancy.book import glue_verdict, settings_table
from speechllm_redundancy.cache import key_of
from speechllm_redundancy.ceilings import cached_gold_ceiling
from speechllm_redundancy.data import build_corpus
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.evaluation import AST_THRESHOLD, describe_unusable, no_better_than_chance
from speechllm_redundancy.layers import num_decoder_layers
from speechllm_redundancy.paths import artifact_path
from speechllm_redundancy.results import record_baseline
from speechllm_redundancy.training import TrainConfig, trained_slam

ANGLE_UTTERANCES = 64  # training utterances each path is measured on (as in chapter 3)
torch.manual_seed(seed)
manifests = build_corpus(corpus)
missing = [f"{d}-{s}" for d in directions for s in ("train", "test") if f"{d}-{s}" not in manifests]
if missing:
    raise UserError(f"the corpus has no split(s) {missing}: use directions among en-de, fr-en (its splits).")


def speech_model(llm, manifest, task, speech_encoder):
    """A SLAM model shared through the cache (the ASR one is chapter 3's)."""
    limit = train_limit if task == "asr" else ast_train_limit
    # a translation from English starts from the ASR model's CTC warm start: the same skill, more speech
    english = task.startswith("ast-en-") and speech_encoder == encoder
    return trained_slam(speech_encoder, llm, manifest, task=task, steps=train_steps, seed=seed, recipe=recipe,
                        ctc_steps=ctc_steps, whisper_window=whisper_window, train_limit=limit, device=device,
                        warm_start_manifest=manifests["train"] if english else None,
                        warm_start_limit=train_limit if english else None)


walks, paths, matrices = [], [], {}
for llm in speech_llms:
    asr_slam, asr_run = speech_model(llm, manifests["train"], "asr", encoder)  # chapter 3's model and path
    asr_matrix = sweep.speech_angles(asr_slam, manifests["train"], asr_run.key, limit=ANGLE_UTTERANCES)
    del asr_slam
    for direction in directions:
        task, train_split, test_split = f"ast-{direction}", f"{direction}-train", f"{direction}-test"
        slam, run = speech_model(llm, manifests[train_split], task, ast_encoder)
        key = run.key
        ast_matrix = sweep.speech_angles(slam, manifests[train_split], key, limit=ANGLE_UTTERANCES, task=task)
        num_layers = num_decoder_layers(slam.llm)
        sizes = sweep.path_sizes(num_layers, pruned_fractions)
        heal_data, heal_config = run.data, TrainConfig(steps=healing_steps, seed=seed)
        matrices[llm, direction] = ast_matrix, asr_matrix
        evaluate = sweep.manifest_evaluator(manifests, task, limit=eval_limit, max_new_tokens=max_new_tokens)
        for path_name, matrix in (("AST-derived", ast_matrix), ("ASR-derived", asr_matrix)):
            path = matrix.optimal_path()
            walk = sweep.walk_path(slam, path, sizes, [test_split], evaluate,
                                   artifact_path("sweeps", f"{task}-{key}"), strategy=healing,
                                   heal_data=heal_data, heal_config=heal_config,
                                   key=key_of(key, eval_limit, max_new_tokens))
            walks.append(walk.assign(model=llm, direction=direction, path=path_name, layers=num_layers))
            paths += [{"model": llm, "direction": direction, "path": path_name, "n": n, "start": path[n]}
                      for n in sizes]
        del slam
walks = pd.concat(walks, ignore_index=True)
paths = pd.DataFrame(paths)

# %% [markdown]
# ## Table 2 layout
#
# BLEU of the translation model unpruned (–) and with a share of its decoder layers removed along each path
# (relative change in brackets), per direction.

# %%
def cell(row):
    return f"{row.score:.2f}" + (f" ({row.delta:+.1%})" if row.n else "")


drop = [f"{n}/{L} ({n / L:.1%})" if n else "–" for n, L in zip(walks.n, walks.layers)]
table = walks.assign(**{"% drop": drop, "BLEU": walks.apply(cell, axis=1)})
table = table.pivot_table(index=["model", "n", "% drop"], columns=["path", "direction"], values="BLEU",
                          aggfunc="first")
table = table.droplevel("n").reindex(columns=["AST-derived", "ASR-derived"], level="path")
table

# %% [markdown]
# Where each path starts its removed block (l\*(n)), and whether the two agree:

# %%
starts = paths.pivot_table(index=["model", "direction", "n"], columns="path", values="start").astype(int)
starts["same block"] = starts["AST-derived"] == starts["ASR-derived"]
starts

# %%
finite = walks.delta.replace([float("inf"), float("-inf")], float("nan"))  # Δ from a BLEU of 0: not drawn
pruned = walks.assign(delta=finite)[walks.n > 0].assign(curve=lambda f: f.direction + ", " + f.path)
fig, ax = plt.subplots(figsize=(6.5, 4))
plots.delta_plot(pruned.assign(set=pruned.model), threshold=AST_THRESHOLD, hue="curve",
                 metric="relative BLEU change", ax=ax)
ax.set_title("Relative BLEU change along the AST- and ASR-derived paths");

# %%
summary = []
for (llm, direction), group in walks.groupby(["model", "direction"], sort=False):
    num_layers = int(group.layers.iloc[0])
    by_path = {p: g for p, g in group.groupby("path")}
    ast_walk, asr_walk = by_path["AST-derived"], by_path["ASR-derived"]
    ast_scores, asr_scores = ast_walk.set_index("n")["score"], asr_walk.set_index("n")["score"]
    gap = (ast_scores - asr_scores).abs()
    chosen = starts.loc[(llm, direction)]
    summary.append({"model": llm, "direction": direction, "baseline BLEU": float(ast_scores.loc[0]),
                    "removable (AST-derived)": sweep.removable(ast_walk, num_layers, "ast"),
                    "removable (ASR-derived)": sweep.removable(asr_walk, num_layers, "ast"),
                    "largest BLEU gap": float(gap.max()),
                    "levels with the same block": float(chosen["same block"].mean()),
                    "path agreement (every n)": angles.path_agreement(*matrices[llm, direction])})
summary = pd.DataFrame(summary)
glue("ch4_max_gap", float(summary["largest BLEU gap"].max()), display=False)
glue("ch4_same_block", float(summary["levels with the same block"].mean()), display=False)
glue("ch4_path_agreement", float(summary["path agreement (every n)"].mean()), display=False)
glue("ch4_removable_ast", float(summary["removable (AST-derived)"].min()), display=False)
glue("ch4_removable_asr", float(summary["removable (ASR-derived)"].min()), display=False)
summary.style.format({"baseline BLEU": "{:.2f}", "removable (AST-derived)": "{:.1%}",
                      "removable (ASR-derived)": "{:.1%}", "largest BLEU gap": "{:.2f}",
                      "levels with the same block": "{:.0%}", "path agreement (every n)": "{:.0%}"})

# %% [markdown]
# The two paths remove the same block at {glue:text}`ch4_same_block:.0%` of the pruning levels walked
# (and pick the same start l\*(n) for {glue:text}`ch4_path_agreement:.0%` of all block sizes n); the largest
# BLEU difference between them at any level is {glue:text}`ch4_max_gap:.2f` BLEU points. Within the −10 %
# threshold, {glue:text}`ch4_removable_ast:.1%` of the decoder layers can be removed along the AST-derived
# path and {glue:text}`ch4_removable_asr:.1%` along the ASR-derived path (the smaller over directions).

# %% [markdown]
# ## This run
#
# The settings this page was executed with:

# %%
settings = dict(recipe=recipe, train_limit=train_limit, ast_train_limit=ast_train_limit, encoder=encoder,
                ast_encoder=ast_encoder, speech_llms=speech_llms, directions=directions,
                pruned_fractions=pruned_fractions, eval_limit=eval_limit, max_new_tokens=max_new_tokens,
                healing=healing, healing_steps=healing_steps, train_steps=train_steps, ctc_steps=ctc_steps,
                whisper_window=whisper_window, corpus=corpus, device=device, seed=seed)
settings_table(settings)

# %% [markdown]
# ## Verdict
#
# Claim 6 of the paper: the ASR-derived path applied to translation gives nearly the same BLEU as the
# AST-derived path. Here it holds when, for every decoder and direction, both paths allow the same
# removable fraction and their BLEU differs at every level by at most 2 % of the unpruned BLEU (a fifth of
# the −10 % acceptance margin). A direction whose unpruned BLEU is no better than chance
# (`evaluation.chance_score`: the better of an empty output and another sentence's reference) cannot tell
# the paths apart: the claim is then not testable.

# %%
TOLERANCE = 0.02  # largest BLEU gap between the paths, relative to the unpruned BLEU
chance = {d: sweep.chance_scores(manifests, [f"{d}-test"], f"ast-{d}", eval_limit) for d in directions}
unusable = []
for _, r in summary.iterrows():
    task, test_split = f"ast-{r['direction']}", f"{r['direction']}-test"
    ceiling = cached_gold_ceiling(r["model"], task, manifests[test_split], eval_limit, device=device)
    record_baseline(r["model"], "frozen decoder", task, {test_split: r["baseline BLEU"]}, chance[r["direction"]],
                    ceiling, recipe=recipe)
    if bad := no_better_than_chance({test_split: r["baseline BLEU"]}, chance[r["direction"]], task):
        unusable.append(describe_unusable(r["model"], bad, task))
how = f"with {healing} healing" if healing != "none" else "without healing"
variant = f"translation models with frozen decoders of {', '.join(speech_llms)}, {how}"
if unusable:
    glue_verdict(6, None, "; ".join(unusable), variant=variant, recipe=recipe)
else:
    close = summary["largest BLEU gap"] <= TOLERANCE * summary["baseline BLEU"]
    same = summary["removable (AST-derived)"] == summary["removable (ASR-derived)"]
    holds6 = bool((close & same).all())

    def described(r):
        ast_removable, asr_removable = r["removable (AST-derived)"], r["removable (ASR-derived)"]
        return (f"{r['model']} {r['direction']}: same block at {r['levels with the same block']:.0%} of the "
                f"levels, largest gap {r['largest BLEU gap']:.2f} of {r['baseline BLEU']:.2f} BLEU, "
                f"removable {ast_removable:.0%} (AST path) vs {asr_removable:.0%} (ASR path)")

    listing = "; ".join(described(r) for _, r in summary.iterrows())
    glue_verdict(6, holds6, listing, variant=variant, recipe=recipe)
