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
# # Healing dynamics
#
# **Question.** After a block of decoder layers is removed, how much of the lost accuracy can a little
# training win back, and which part of the model should that training touch?
#
# **How.** We prune progressively along the optimal path and compare four healing strategies — none,
# decoder only (LoRA on the receiving layer's MLP), projector only, and both — by the relative change in
# WER on each evaluation set against the fraction of layers removed. A pruning level is acceptable while
# the relative WER stays within +25 % on every set at once. We also prune along the text-derived path
# instead of the speech-derived one.

# %% tags=["parameters", "hide-cell"]
corpus = {"size": "default"}  # corpus builder settings (the profile's top-level `corpus`)
device = "cpu"  # "cpu" or "cuda"
seed = 0
encoder = "whisper-base"  # frozen speech encoder: zoo name, local HF directory or hub id
speech_llms = ["smollm2-135m", "qwen2.5-coder-0.5b"]  # decoders of the SLAM models; this chapter heals the first
train_steps = 3000  # SLAM training steps (projector, and LoRA where used), or {decoder: steps}; shared via the cache
ctc_steps = None  # CTC warm-start steps of the cpu recipe (shared by its models); None: the recipe default
whisper_window = "padded"  # Whisper features: "full" (30 s window), "padded" (+ 2 s of silence) or "trim"
recipe = "cpu"  # SLAM training: "paper" (as published) or "cpu" (CTC warm start, the LLM reads its output; book/method.md)
train_limit = 8192  # train on the first N utterances of the training split only; None uses all of it
healing_steps = 300  # training steps of each healing run
path_samples = 64  # validation (`dev`) utterances whose angles (speech) or transcripts (text) give the paths
eval_limit = 100  # utterances decoded per evaluation set and pruning level; None decodes all
max_new_tokens = None  # cap on the tokens decoded per utterance; None keeps the decoder's default (200)
decode_precision = "auto"  # of the decoder's products while decoding: "auto" (bf16 on a CPU that multiplies it natively), "bf16", "fp32"
pruned_fractions = [0.1, 0.2, 0.3, 0.4]  # fractions of decoder layers removed (rounded to whole layers); None walks every n up to half
text_path_strategies = ["none", "decoder", "projector", "both"]  # strategies also walked on the text-derived path

# %% [markdown]
# ## Method of this chapter
#
# The SLAM model of the profile's first speech LLM (frozen encoder, trained projector, frozen decoder;
# the same trained model as chapters 1 and 3, through the cache). Two pruning paths $\ell^*(n)$: the
# **speech-derived** one, from the angular distances of the model's own speech inputs (the first `path_samples`
# utterances of the validation split `dev`, as in chapter 3), and the **text-derived** one, from the decoder LLM alone fed the
# transcripts of the same utterances as plain text. For each path and each pruning level $n$, the block is
# removed and the model healed with each strategy for `healing_steps` steps of the SLAM training loss on
# the training set (the pruned model as a start, the training loop's defaults with a warm-up of a tenth of
# the run: `healing.healing_config`; under the `cpu` recipe the projector strategies also keep the warm start's
# CTC loss beside it, so the labels the decoder reads stay put: `healing.CTC_ANCHOR`, the method page's "Healing").
# Every evaluation set is
# then decoded greedily (`eval_limit` utterances each). Points shared by the two paths (same $n$, same
# start) are computed once. The text-derived path is walked with `text_path_strategies` (all four by
# default; a CPU profile may keep only `none`, since the paths' difference shows before any healing).

# %% tags=["hide-output"]
from speechllm_redundancy.chapters import healing_dynamics
from speechllm_redundancy.experiments import Settings, Study
from speechllm_redundancy.report import glue_finding, glue_verdict, settings_table

study = Study(Settings.of(globals()))
walks = healing_dynamics.measure(study, speech_llms[0], pruned_fractions, text_path_strategies)

# %%
glue_finding("ch2", walks.paths_table())

# %% [markdown]
# The table above gives the first layer $\ell^*(n)$ of the block each path removes, for every pruning level
# $n$ of {glue:text}`ch2_layers` layers.
#
# ## WER after pruning, by healing strategy
#
# The relative WER change on each evaluation set against the fraction of decoder layers removed (0 = the
# unpruned model), one panel per path; the dashed line is the +25 % threshold.

# %%
walks.delta_figure();

# %% [markdown]
# ## Removable fraction and mean WER change
#
# Per path and strategy: the largest fraction of layers whose relative WER change stays within +25 % on
# every set (the paper's criterion), and the relative WER change averaged over the pruned levels and sets.

# %%
glue_finding("ch2", walks.strategies())

# %% [markdown]
# Along the speech-derived path, without healing the WER rises by up to {glue:text}`ch2_worst_none:+.1%`
# (on average {glue:text}`ch2_mean_delta_none:+.1%` over the pruned levels and sets); healing the decoder
# gives {glue:text}`ch2_mean_delta_decoder:+.1%`, the projector {glue:text}`ch2_mean_delta_projector:+.1%`,
# both {glue:text}`ch2_mean_delta_both:+.1%`. The removable fraction is {glue:text}`ch2_removable_none:.1%`
# without healing, {glue:text}`ch2_removable_decoder:.1%` with decoder healing,
# {glue:text}`ch2_removable_projector:.1%` with projector healing and {glue:text}`ch2_removable_both:.1%`
# with both. These averages take in every level walked; the verdict below ranks the strategies only on the
# levels where some healed model still beats chance, so its means can differ.

# %% [markdown]
# ## Text-derived versus speech-derived path
#
# The paper finds the text-derived path's curve "closely tracks" the speech-derived one. For each strategy
# walked on both paths and each level: the largest difference of the relative WER change between the two
# paths over the evaluation sets (0 where both paths remove the same block: the same pruned model).

# %%
glue_finding("ch2", walks.path_gaps())

# %% [markdown]
# At the levels walked, the two paths' relative WER changes differ by at most
# {glue:text}`ch2_largest_path_gap:.1%` (over strategies and sets).

# %% [markdown]
# ## This run
#
# The settings this page was executed with:

# %%
settings_table(study.settings.as_dict() | walks.parameters)

# %% [markdown]
# ## Verdict
#
# Claim 4 of the paper: without healing WER degrades sharply; decoder-only healing helps; healing decoder
# and projector together is best; projector-only healing is about as good as none. On the speech-derived
# path it holds here when all four parts do: the worst relative WER change without healing exceeds +50 %;
# decoder healing lowers the mean relative change below no healing; healing both gives the lowest mean of
# all strategies; and projector healing's mean is within 5 points (or a fifth of no healing's, whichever is
# larger) of no healing's (`verdicts.claim_4`). The means and the worst change are taken over the levels
# where some strategy's healed model still beats chance on every set (`sweep.working_levels`); a level where
# every model is broken is left out and named, and with none left the ranking is not informative (it would
# order broken models). It is not testable when the unpruned model does no better on some set than chance
# (`evaluation.chance_score`: the better of an empty output and another utterance's reference, averaged
# over pairings): relative changes from such a baseline say nothing of pruning.

# %%
glue_verdict(walks.claim_4())

# %% [markdown]
# **Claim 4** (healing decoder and projector together is best): {glue:text}`claim_4`
