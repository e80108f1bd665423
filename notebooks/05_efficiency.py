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
# **Question.** What does removing decoder layers buy in practice: how much faster does the SpeechLLM
# transcribe, how much less memory does it need, and is that what the removed layers carried?
#
# **How.** Two measurements, kept apart. First the **decoder alone** on a random prompt, pruned by every
# fraction of the profile: what its layers cost, with nothing else in the way. Then the **whole SpeechLLM**
# — speech encoder, projector and decoder — transcribing real test utterances from their audio, unpruned
# and pruned near the paper's 40 %: what the paper's claim is about. Each is compared with its *ideal*:
# the time and memory the removed layers accounted for.

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
pruned_fractions = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]  # fractions of layers removed from the decoder alone
speech_llm_fractions = [0.4]  # fractions removed from the whole SpeechLLM (the verdict: the one nearest 40 %)
timing_split = "test-clean"  # the utterances the whole SpeechLLM transcribes
timing_utterances = 16  # how many of them (the first N), one at a time
repeats = 3  # timing repetitions per point: the median is reported, with the fastest and slowest

# %% [markdown]
# ## Method of this chapter
#
# **The decoder alone.** Each decoder of the profile's SpeechLLMs runs a greedy loop with a KV cache on a
# random 256-token prompt: one prefill forward, then 32 decoding steps. For each fraction $f$ the block of
# $\mathrm{round}(fL)$ layers ending just before the last layer is removed (every block of the same size
# costs the same). The rows are timed one after another, `repeats` times each.
#
# **The whole SpeechLLM.** The SLAM model of each decoder (shared through the cache with the other chapters)
# transcribes the first `timing_utterances` utterances of `timing_split`, one at a time: the encoder runs on
# the waveform (no cached features), the projector maps its frames, the decoder prefills the prompt and
# then decodes greedily. Every model decodes as many tokens as the utterance's reference transcript holds
# (with its stop token), so the unpruned and the pruned model do the same work and only the layers differ.
# Within each repeat every model runs every utterance in turn (in the reverse order on alternate repeats),
# so a slow spell of this shared machine slows all of them alike.
#
# **What is reported.** Times are the **median** over the repeats, with the fastest and slowest repeat;
# a saving is that of the medians, and its **spread** its range over the repeats: from the slowest pruned
# repeat against the fastest unpruned one to the reverse. The encoder phase, the same work in the unpruned
# and the pruned SpeechLLM, shows how far noise alone moves a saving. The *ideal* time saving is the
# removed share of the decoder's FLOPs (the LM head is not pruned); for the whole SpeechLLM the encoder
# keeps its measured time and only prefill and decoding shrink by their ideals. Peak memory is the parameters
# (encoder included) plus the largest increase while running; its ideal is the unpruned peak less the
# removed layers' weights and KV cache. Measurements are cached on disk, keyed by model and settings.

# %% tags=["hide-output"]
from speechllm_redundancy.chapters import efficiency
from speechllm_redundancy.experiments import Settings, Study
from speechllm_redundancy.report import glue_finding, glue_verdict, settings_table

study = Study(Settings.of(globals()))
costs = efficiency.measure(study, speech_llms, pruned_fractions, speech_llm_fractions, timing_split,
                           timing_utterances, repeats)

# %% [markdown]
# ## The decoder alone
#
# Median prefill and decoding times, the decoding saving with its spread, and the peak memory during
# decoding against its ideal.

# %%
costs.decoder_table()

# %%
costs.decoder_figure();

# %% [markdown]
# ## The whole SpeechLLM
#
# Median seconds per phase, summed over the utterances: `encode` is the speech encoder on the audio plus
# the projector (pruning does not touch them: their "saving" is noise), then the decoder's prefill and
# greedy decoding. Savings come with their spread over the repeats; the peak memory is that of the whole
# model, encoder included.

# %%
costs.speech_llm_table()

# %%
costs.speech_llm_figure();

# %% [markdown]
# ## Finding
#
# At the point nearest the paper's 40 % (for the largest decoder of this profile), removing
# {glue:text}`ch5_fraction:.0%` of the layers saved {glue:text}`ch5_saving:.0%` of the whole SpeechLLM's time
# (over the repeats {glue:text}`ch5_saving_spread`; ideal {glue:text}`ch5_ideal_saving:.0%`) — the decoder
# alone, on a random prompt, saved {glue:text}`ch5_decoder_saving:.0%` of its decoding time at
# {glue:text}`ch5_decoder_fraction:.0%` removed (ideal {glue:text}`ch5_decoder_ideal:.0%`). The SpeechLLM's
# peak memory went from {glue:text}`ch5_mem_base:.1f` to {glue:text}`ch5_mem_pruned:.1f` MiB, a ratio of
# {glue:text}`ch5_mem_ratio:.2f` against an ideal of {glue:text}`ch5_mem_ideal:.2f` for this model; the paper's
# 8B went to {glue:text}`ch5_paper_ratio:.2f` of its peak, its own ideal being {glue:text}`ch5_paper_ideal:.2f`.

# %%
glue_finding("ch5", costs.finding())

# %% [markdown]
# ## This run
#
# The settings this page was executed with:

# %%
settings_table(study.settings.as_dict() | costs.parameters)

# %% [markdown]
# ## Verdict
#
# Claim 7 of the paper: removing 40 % of Llama-3.1-8B's decoder layers gave a 35 % wall-clock speed-up and
# cut peak GPU memory from 15.72 to 10.37 GiB. Measured against their ideals, the paper's pruned model
# saved 93 % of its ideal decoding time (35 % of 37.8 %) and all of its ideal memory (10.37 GiB against
# 10.44). Here, on the whole SpeechLLM at the point nearest 40 % (largest decoder), each half must reach
# 90 % of this model's own ideal (`verdicts.SHARE_OF_IDEAL`; `verdicts.claim_7`):
#
# - **speed**: the total time saved, judged only beyond its spread: it holds when the smallest saving over
#   the repeats reaches 90 % of the ideal, fails when the largest stays below it, and is undecided (not
#   testable) when that bar lies within the spread — or when a single repeat gives no spread at all;
# - **memory**: the measured drop of the peak is at least 90 % of the ideal drop (the removed layers'
#   weights and KV cache). A pruned copy that keeps part of its removed layers' memory fails, though its
#   peak is lower.
#
# The claim holds when both halves hold, fails when either fails, and is otherwise not testable.

# %%
glue_verdict(costs.claim_7())

# %% [markdown]
# **Claim 7** (pruning 40 % saves time and memory near its ideal): {glue:text}`claim_7`
