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
decode_precision = "auto"  # of the decoder's products while decoding: "auto" (bf16 on a CPU that multiplies it natively), "bf16", "fp32"
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
from speechllm_redundancy.chapters import scales
from speechllm_redundancy.experiments import Settings, Study
from speechllm_redundancy.report import glue_finding, glue_verdict, settings_table

study = Study(Settings.of(globals()))
models = scales.measure(study, speech_llms, lora_llms, lora=lora, lora_steps=lora_steps, strategy=healing,
                        fractions=pruned_fractions)

# %% [markdown]
# ## Table 1 layout
#
# WER (%) of each decoder unpruned and at the largest acceptable pruning level (relative change in
# brackets), with the share of layers removed.

# %%
models.table_1()

# %%
models.delta_figure();

# %% [markdown]
# ## Removable fraction by decoder size

# %%
models.size_figure();

# %%
glue_finding("ch3", models.removable())

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
models.width_figure();

# %%
glue_finding("ch3", models.width())

# %% [markdown]
# At $\tau$ = {glue:text}`ch3_tau:.2f`, {glue:text}`ch3_width_smallest:.0%` of the smallest decoder's blocks
# and {glue:text}`ch3_width_largest:.0%` of the largest decoder's lie in the low-distance region.

# %% [markdown]
# ## This run
#
# The settings this page was executed with:

# %%
settings_table(study.settings.as_dict() | models.parameters)

# %% [markdown]
# ## Verdict
#
# Claim 5 of the paper: larger decoders tolerate more pruning. Here (after `healing`) it holds when the
# largest level within the bar never decreases with decoder size and the largest decoder reaches a higher
# level than the smallest, among the frozen decoders whose unpruned model does better than chance
# (`evaluation.chance_score`: the better of an empty output and another utterance's reference, averaged over pairings) on every
# set. Decoders are compared by the level walked (`pruned_fractions`), not by $n/L$: one fraction rounds to
# different layer counts in decoders of different depths (4 % is 1 of 30 layers and 1 of 24), and that is
# no difference in tolerance. With fewer than two such decoders, or when none of them removed any layer, or
# when all of them reached the highest level walked (the levels walked cannot then tell the sizes apart),
# it is not testable (`verdicts.claim_5`).

# %%
glue_verdict(models.claim_5())

# %% [markdown]
# **Claim 5** (larger decoders tolerate more pruning): {glue:text}`claim_5`
