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
# # Efficiency
#
# **Question.** What does removing decoder layers buy in practice: how much faster does the decoder run,
# and how much memory does it need?
#
# **How.** We time prefill and greedy decoding, and record peak memory, for the decoder pruned by each
# fraction of the profile, and compare the measured saving with the ideal one: the share of decoder
# compute that the removed layers carried.

# %% tags=["parameters", "hide-cell"]
corpus = {"size": "default"}  # corpus builder settings (the profile's top-level `corpus`)
device = "cpu"  # "cpu" or "cuda"
seed = 0
encoder = "whisper-base"  # frozen speech encoder: zoo name, local HF directory or hub id
speech_llms = ["smollm2-135m", "qwen2.5-coder-0.5b"]  # decoders of the SLAM models
train_steps = 3000  # SLAM training steps (projector, and LoRA where used); models are shared via the cache
pruned_fractions = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]  # fractions of decoder layers removed
repeats = 3  # timing repetitions per point (the median is reported)

# %% [markdown]
# ## This run
#
# This chapter is a skeleton: the measurements are made here once the efficiency code is in the library.
# The settings this page was executed with:

# %%
import pandas as pd
import seaborn as sns

from speechllm_redundancy.book import glue_verdict

settings = dict(speech_llms=speech_llms, pruned_fractions=pruned_fractions, repeats=repeats, device=device,
                seed=seed)
pd.Series({name: str(value) for name, value in settings.items()}, name="value").to_frame()

# %% [markdown]
# The reference every measurement will be drawn against: if the removed layers carried all of the
# decoder's compute, its run time would fall in proportion to the fraction removed.

# %%
ideal = pd.DataFrame({"fraction of decoder layers removed": pruned_fractions,
                      "relative decoder time": [1 - f for f in pruned_fractions]})
ax = sns.lineplot(data=ideal, x="fraction of decoder layers removed", y="relative decoder time",
                  marker="o", label="ideal (time ∝ layers kept)")
ax.set(ylim=(0, 1.05), title="Ideal decoder time after pruning");

# %% [markdown]
# ## Verdict
#
# Claim 7 of the paper: removing 40 % of Llama-3.1-8B's decoder layers gave a 35 % wall-clock speed-up and
# cut peak GPU memory from 15.72 to 10.37 GiB.

# %%
glue_verdict(7, "pending")
