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
directions = ["en-de", "fr-en"]  # translation directions (corpus splits <direction>-train / -test / -dev)
pruned_fractions = [0.1, 0.2, 0.3, 0.4]  # fractions of decoder layers removed (rounded to whole layers)
eval_limit = 100  # test utterances decoded per direction and pruning level; None decodes all
max_new_tokens = None  # cap on the tokens decoded per utterance; None keeps the decoder's default (200)
decode_precision = "auto"  # of the decoder's products while decoding: "auto" (bf16 on a CPU that multiplies it natively), "bf16", "fp32"
healing = ["none", "both"]  # strategies after pruning (none, decoder, projector, both); the verdict uses the last
healing_steps = 300  # training steps of each healing run
path_samples = 64  # utterances whose angles give each path (ASR: `dev`; AST: `<direction>-dev`, else -train)

# %% [markdown]
# ## Method of this chapter
#
# For every decoder of the profile and every translation direction:
#
# 1. the **AST model**: frozen `ast_encoder`, trained projector, frozen decoder, trained on the direction's
#    training split with its translation prompt; its **AST-derived path** comes from the angular distances
#    of its own inputs (`path_samples` utterances of the direction's validation split `<direction>-dev`,
#    with the translation prompt; in a corpus without that split, training utterances instead);
# 2. the **ASR model** of the same decoder, exactly as chapter 3 trains it (shared through the cache); its
#    **ASR-derived path** comes from `path_samples` utterances of the recognition validation split `dev`;
# 3. the AST model pruned along each path at every level of `pruned_fractions` (rounded to whole layers),
#    healed with each strategy of `healing`, and scored by greedy decoding of `eval_limit` test utterances (at most
#    `max_new_tokens` tokens each; corpus BLEU).
#
# Where the two paths remove the same block, the pruned models are the same and so is their BLEU (the
# cached point is reused). A level is acceptable while ΔBLEU ≥ −10 % relative to the unpruned model.

# %% tags=["hide-output"]
from speechllm_redundancy.chapters import translation
from speechllm_redundancy.experiments import Settings, Study
from speechllm_redundancy.report import glue_finding, glue_verdict, settings_table

study = Study(Settings.of(globals()))
transfer = translation.measure(study, speech_llms, directions, ast_encoder, pruned_fractions, healing)

# %% [markdown]
# ## Table 2 layout
#
# BLEU of the translation model unpruned (–) and with a share of its decoder layers removed along each path
# (relative change in brackets), per direction, healed with the last strategy of `healing`.

# %%
transfer.table_2()

# %% [markdown]
# Where each path starts its removed block ($\ell^*(n)$), and whether the two agree:

# %%
transfer.starts_table()

# %%
transfer.delta_figure();

# %%
glue_finding("ch4", transfer.summary())

# %% [markdown]
# The two paths remove the same block at {glue:text}`ch4_same_block:.0%` of the pruning levels walked
# (and pick the same start $\ell^*(n)$ for {glue:text}`ch4_path_agreement:.0%` of all block sizes n); the
# largest BLEU difference between them at any level is {glue:text}`ch4_max_gap:.2f` BLEU points. Within the
# −10 % threshold, {glue:text}`ch4_removable_ast:.1%` of the decoder layers can be removed along the
# AST-derived path and {glue:text}`ch4_removable_asr:.1%` along the ASR-derived path (the smaller over
# directions).

# %% [markdown]
# ## Healing after pruning
#
# The paper (§5.3) finds that translation loses BLEU sharply without healing and that joint healing
# recovers most of it. BLEU along the AST-derived path for each strategy of `healing` (relative change in
# brackets):

# %%
glue_finding("ch4", transfer.healing())

# %% [markdown]
# Averaged over the levels and directions, the relative BLEU change is
# {glue:text}`ch4_mean_delta_none:+.1%` without healing and {glue:text}`ch4_mean_delta_both:+.1%` with joint
# healing (where the profile walks them).

# %% [markdown]
# ## This run
#
# The settings this page was executed with:

# %%
settings_table(study.settings.as_dict() | transfer.parameters)

# %% [markdown]
# ## Verdict
#
# Claim 6 of the paper: the ASR-derived path applied to translation gives nearly the same BLEU as the
# AST-derived path. Here it holds when, for every decoder and direction, both paths allow the same
# removable fraction and their BLEU differs at every level by at most 2 % of the unpruned BLEU (a fifth of
# the −10 % acceptance margin; `verdicts.claim_6`). A direction whose unpruned BLEU is no better than
# chance (`evaluation.chance_score`: the better of an empty output and another sentence's reference, averaged over pairings)
# cannot tell the paths apart: the claim is then not testable.

# %%
glue_verdict(transfer.claim_6())

# %% [markdown]
# **Claim 6** (the ASR-derived path serves translation as well as its own): {glue:text}`claim_6`
