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
ast_encoder = "whisper-base"  # speech encoder of the translation models: one name, or {direction: name} (others: `encoder`)
directions = ["en-de", "fr-en"]  # translation directions (corpus splits <direction>-train / -test)
pruned_fractions = [0.1, 0.2, 0.3, 0.4]  # fractions of decoder layers removed (rounded to whole layers)
eval_limit = 100  # test utterances decoded per direction and pruning level; None decodes all
max_new_tokens = None  # cap on the tokens decoded per utterance; None keeps the decoder's default (200)
healing = ["none", "both"]  # strategies after pruning (none, decoder, projector, both); the verdict uses the last
healing_steps = 300  # training steps of each healing run
path_samples = 64  # utterances whose angles give each path (ASR: the `dev` split; AST: its training split)

# %% [markdown]
# ## Method of this chapter
#
# For every decoder of the profile and every translation direction:
#
# 1. the **AST model**: frozen `ast_encoder`, trained projector, frozen decoder, trained on the direction's
#    training split with its translation prompt; its **AST-derived path** comes from the angular distances
#    of its own inputs (`path_samples` training utterances, translation prompt: the corpus has no
#    translation validation split);
# 2. the **ASR model** of the same decoder, exactly as chapter 3 trains it (shared through the cache); its
#    **ASR-derived path** comes from `path_samples` utterances of the recognition validation split `dev`;
# 3. the AST model pruned along each path at every level of `pruned_fractions` (rounded to whole layers),
#    healed with each strategy of `healing`, and scored by greedy decoding of `eval_limit` test utterances (at most
#    `max_new_tokens` tokens each; corpus BLEU).
#
# Where the two paths remove the same block, the pruned models are the same and so is their BLEU (the
# cached point is reused). A level is acceptable while ΔBLEU ≥ −10 % relative to the unpruned model.

# %% tags=["hide-output"]
import matplotlib.pyplot as plt
import pandas as pd
from myst_nb import glue

from speechllm_redundancy import angles, plots
from speechllm_redundancy.book import glue_verdict, settings_table
from speechllm_redundancy.errors import UserError
from speechllm_redundancy.evaluation import AST_THRESHOLD, describe_unusable
from speechllm_redundancy.experiments import Settings, Study
from speechllm_redundancy.healing import STRATEGIES, check_strategy

study = Study(Settings.of(globals()))
strategies = [healing] if isinstance(healing, str) else list(healing)
if not strategies:
    raise UserError("healing is empty: name at least one strategy (none, decoder, projector, both).")
for strategy in strategies:
    check_strategy(strategy)
encoders = dict(ast_encoder) if isinstance(ast_encoder, dict) else {d: ast_encoder for d in directions}
walks, paths, matrices, runs = [], [], {}, {}
for llm in speech_llms:
    asr_run = study.slam(llm)  # chapter 3's model and path
    asr_matrix = study.speech_angles(asr_run)
    del asr_run
    for direction in directions:
        run = study.slam(llm, f"ast-{direction}", encoder=encoders.get(direction, encoder))
        ast_matrix = study.speech_angles(run)
        matrices[llm, direction] = ast_matrix, asr_matrix
        for path_name, matrix in (("AST-derived", ast_matrix), ("ASR-derived", asr_matrix)):
            path = matrix.optimal_path()
            for strategy in strategies if path_name == "AST-derived" else strategies[-1:]:  # compared on one path
                walk = study.walk(run, path, pruned_fractions, strategy=strategy)
                walks.append(walk.assign(model=llm, direction=direction, path=path_name, layers=run.num_layers))
            paths += [{"model": llm, "direction": direction, "path": path_name, "n": n, "start": path[n]}
                      for n in sorted(set(walk.n) - {0})]
        runs[llm, direction] = run
everything = pd.concat(walks, ignore_index=True)
walks = everything[everything.strategy == strategies[-1]]  # Table 2 and the verdict: the last strategy
paths = pd.DataFrame(paths)

# %% [markdown]
# ## Table 2 layout
#
# BLEU of the translation model unpruned (–) and with a share of its decoder layers removed along each path
# (relative change in brackets), per direction, healed with the last strategy of `healing`.

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
                    "removable (AST-derived)": study.removable(ast_walk, runs[llm, direction]),
                    "removable (ASR-derived)": study.removable(asr_walk, runs[llm, direction]),
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
# ## Healing after pruning
#
# The paper (§5.3) finds that translation loses BLEU sharply without healing and that joint healing
# recovers most of it. BLEU along the AST-derived path for each strategy of `healing` (relative change in
# brackets):

# %%
ast_path = everything[(everything.path == "AST-derived") & (everything.n > 0)]
healed = ast_path.assign(BLEU=ast_path.apply(cell, axis=1)).pivot_table(
    index=["model", "direction", "n"], columns="strategy", values="BLEU", aggfunc="first")
healed = healed.reindex(columns=strategies)
mean_delta = ast_path.replace([float("inf"), float("-inf")], float("nan")).groupby("strategy").delta.mean()
for strategy in STRATEGIES:  # every one glued (nan where not walked): the text below names two
    glue(f"ch4_mean_delta_{strategy}", float(mean_delta.get(strategy, float("nan"))), display=False)
healed

# %% [markdown]
# Averaged over the levels and directions, the relative BLEU change is
# {glue:text}`ch4_mean_delta_none:+.1%` without healing and {glue:text}`ch4_mean_delta_both:+.1%` with joint
# healing (where the profile walks them).

# %% [markdown]
# ## This run
#
# The settings this page was executed with:

# %%
settings_table(study.settings.as_dict() | dict(speech_llms=speech_llms, ast_encoder=ast_encoder,
                                              directions=directions, pruned_fractions=pruned_fractions,
                                              healing=strategies))

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
unusable = []
for (llm, direction), run in runs.items():
    baseline = walks[(walks.model == llm) & (walks.direction == direction) & (walks.path == "AST-derived")]
    study.record_baseline(run, baseline)
    if bad := study.unusable(baseline, run.task):
        unusable.append(describe_unusable(llm, bad, run.task))
how = f"{strategies[-1]} healing, {healing_steps} steps" if strategies[-1] != "none" else "without healing"
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
