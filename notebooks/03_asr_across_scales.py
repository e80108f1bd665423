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
train_steps = 3000  # SLAM training steps (projector, and LoRA where used); models are shared via the cache

# %% [markdown]
# ## This run
#
# This chapter is a skeleton: the table is computed here once training, pruning and evaluation are in the
# library. The settings this page was executed with:

# %%
import pandas as pd

from speechllm_redundancy.book import glue_verdict

settings = dict(encoder=encoder, speech_llms=speech_llms, train_steps=train_steps, corpus=corpus,
                device=device, seed=seed)
pd.Series({name: str(value) for name, value in settings.items()}, name="value").to_frame()

# %% [markdown]
# ## Verdict
#
# Claim 5 of the paper: larger decoders tolerate more pruning.

# %%
glue_verdict(5, "pending")
