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
import matplotlib.pyplot as plt
import pandas as pd
from myst_nb import glue

from speechllm_redundancy import efficiency, plots
from speechllm_redundancy.book import glue_verdict, settings_table
from speechllm_redundancy.experiments import Settings, Study
from speechllm_redundancy.verdicts import SHARE_OF_IDEAL, both_halves, memory_half, speed_half

study = Study(Settings.of(globals()))
decoders = pd.concat([efficiency.cached_efficiency(llm, pruned_fractions, repeats=repeats, device=device,
                                                  seed=seed) for llm in speech_llms], ignore_index=True)
manifest = study.split(timing_split)
runs = {llm: study.slam(llm) for llm in speech_llms}
speech = pd.concat([efficiency.cached_speech_llm_efficiency(
    run.model, run.key, manifest, speech_llm_fractions, limit=timing_utterances, repeats=repeats, device=device,
).assign(model=llm) for llm, run in runs.items()], ignore_index=True)
peaks = ["peak_bytes", "ideal_peak_bytes"]
speech[peaks] = speech[peaks].apply(pd.to_numeric)  # None (not measurable here) → NaN
MIB = 2**20


def span(low: float, high: float) -> str:
    return f"{low:.0%} to {high:.0%}"


def with_spread(frame: pd.DataFrame, phase: str) -> list[str]:
    """Each row's saving of ``phase`` with its spread over the repeats, as text."""
    columns = [f"{phase}_saving", f"{phase}_saving_low", f"{phase}_saving_high"]
    return [f"{s:.1%} ({span(low, high)})" for s, low, high in frame[columns].values]


# %% [markdown]
# ## The decoder alone
#
# Median prefill and decoding times, the decoding saving with its spread, and the peak memory during
# decoding against its ideal.

# %%
columns = {"fraction": "fraction removed", "prefill_s": "prefill (s)", "decode_s": "decode (s)",
           "prefill_saving": "prefill saving", "ideal_prefill_saving": "ideal prefill saving",
           "decode saving (spread)": "decode saving (spread)", "ideal_decode_saving": "ideal decode saving",
           "peak (MiB)": "peak (MiB)", "ideal peak (MiB)": "ideal peak (MiB)"}
table = decoders.assign(**{"decode saving (spread)": with_spread(decoders, "decode"),
                           "peak (MiB)": decoders["decode_peak_bytes"] / MIB,
                           "ideal peak (MiB)": decoders["ideal_decode_peak_bytes"] / MIB})
table = table.set_index(["model", "removed"])[list(columns)].rename(columns=columns)
table.style.format({c: "{:.1%}" for c in ("fraction removed", "prefill saving", "ideal prefill saving",
                                           "ideal decode saving")}
                   | {"prefill (s)": "{:.3f}", "decode (s)": "{:.3f}", "peak (MiB)": "{:.1f}",
                      "ideal peak (MiB)": "{:.1f}"})

# %%
plots.efficiency_plot(decoders, title="The decoder alone (random prompt) vs fraction of layers removed");

# %% [markdown]
# ## The whole SpeechLLM
#
# Median seconds per phase, summed over the utterances: `encode` is the speech encoder on the audio plus
# the projector (pruning does not touch them: their "saving" is noise), then the decoder's prefill and
# greedy decoding. Savings come with their spread over the repeats; the peak memory is that of the whole
# model, encoder included.

# %%
base = speech.groupby("model")["peak_bytes"].transform("first")
columns = {"fraction": "fraction removed", "encode_s": "encode (s)", "prefill_s": "prefill (s)",
           "decode_s": "decode (s)", "total_s": "total (s)",
           "encode saving (spread)": "encode saving (spread)",
           "total saving (spread)": "total saving (spread)",
           "ideal_total_saving": "ideal total saving", "peak (MiB)": "peak (MiB)",
           "ideal peak (MiB)": "ideal peak (MiB)", "peak ratio": "peak ratio", "ideal ratio": "ideal ratio"}
view = speech.assign(**{"encode saving (spread)": with_spread(speech, "encode"),
                        "total saving (spread)": with_spread(speech, "total"),
                        "peak (MiB)": speech["peak_bytes"] / MIB,
                        "ideal peak (MiB)": speech["ideal_peak_bytes"] / MIB,
                        "peak ratio": speech["peak_bytes"] / base,
                        "ideal ratio": speech["ideal_peak_bytes"] / base})
view = view.set_index(["model", "removed"])[list(columns)].rename(columns=columns)
view.style.format({"fraction removed": "{:.1%}", "ideal total saving": "{:.1%}", "peak (MiB)": "{:.1f}",
                   "ideal peak (MiB)": "{:.1f}", "peak ratio": "{:.3f}", "ideal ratio": "{:.3f}"}
                  | {c: "{:.2f}" for c in ("encode (s)", "prefill (s)", "decode (s)", "total (s)")})

# %%
fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
labels = [f"{m}\n{f:.0%} removed" for m, f in speech[["model", "fraction"]].values]
bottom = pd.Series(0.0, index=speech.index)
for phase in ("encode", "prefill", "decode"):
    ax_t.bar(labels, speech[f"{phase}_s"], bottom=bottom, label=phase)
    bottom += speech[f"{phase}_s"]
ax_t.errorbar(labels, speech["total_s"], yerr=[speech["total_s"] - speech["total_min_s"],
                                               speech["total_max_s"] - speech["total_s"]],
              fmt="o", color="black", capsize=4, label="total: median, fastest to slowest repeat")
ax_t.set(ylabel=f"seconds for {timing_utterances} utterances", title="Whole SpeechLLM, time by phase")
ax_t.legend(fontsize=8)
ax_m.bar(labels, speech["peak_bytes"] / MIB, label="measured")
ax_m.scatter(labels, speech["ideal_peak_bytes"] / MIB, color="black", marker="_", s=600, zorder=3,
             label="ideal (unpruned less the removed layers)")
ax_m.set(ylabel="peak memory (MiB)", title="Whole SpeechLLM, peak memory")
ax_m.legend(fontsize=8)
for ax in (ax_t, ax_m):
    ax.tick_params(axis="x", labelsize=8)
fig.tight_layout();

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
largest = speech.groupby("model")["parameter_bytes"].max().idxmax()
rows = speech[speech.model == largest].reset_index(drop=True)
point, unpruned = rows.iloc[(rows["fraction"] - efficiency.PAPER_FRACTION).abs().idxmin()], rows.iloc[0]
alone = decoders[decoders.model == largest].reset_index(drop=True)
alone_point = alone.iloc[(alone["fraction"] - efficiency.PAPER_FRACTION).abs().idxmin()]
mem_base, mem_pruned = unpruned["peak_bytes"] / MIB, point["peak_bytes"] / MIB
mem_ratio, mem_ideal = mem_pruned / mem_base, point["ideal_peak_bytes"] / MIB / mem_base
paper_ratio = efficiency.PAPER_PEAK_GIB[1] / efficiency.PAPER_PEAK_GIB[0]
paper_ideal = efficiency.paper_ideal_peak_ratio()
saving_spread = span(point["total_saving_low"], point["total_saving_high"])
glue("ch5_saving_spread", saving_spread, display=False)
for name, value in {"fraction": point["fraction"], "saving": point["total_saving"],
                    "ideal_saving": point["ideal_total_saving"], "decoder_fraction": alone_point["fraction"],
                    "decoder_saving": alone_point["decode_saving"],
                    "decoder_ideal": alone_point["ideal_decode_saving"], "mem_base": mem_base,
                    "mem_pruned": mem_pruned, "mem_ratio": mem_ratio, "mem_ideal": mem_ideal,
                    "paper_ratio": paper_ratio, "paper_ideal": paper_ideal}.items():
    glue(f"ch5_{name}", float(value), display=False)

# %% [markdown]
# ## This run
#
# The settings this page was executed with:

# %%
settings_table(study.settings.as_dict() | dict(
    speech_llms=speech_llms, pruned_fractions=pruned_fractions, speech_llm_fractions=speech_llm_fractions,
    timing_split=timing_split, timing_utterances=timing_utterances, repeats=repeats))

# %% [markdown]
# ## Verdict
#
# Claim 7 of the paper: removing 40 % of Llama-3.1-8B's decoder layers gave a 35 % wall-clock speed-up and
# cut peak GPU memory from 15.72 to 10.37 GiB. Measured against their ideals, the paper's pruned model
# saved 93 % of its ideal decoding time (35 % of 37.8 %) and all of its ideal memory (10.37 GiB against
# 10.44). Here, on the whole SpeechLLM at the point nearest 40 % (largest decoder), each half must reach
# 90 % of this model's own ideal (`verdicts.SHARE_OF_IDEAL`):
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
speed = speed_half(point["total_saving_low"], point["total_saving_high"], point["ideal_total_saving"],
                   point["repeats"])
memory = memory_half(unpruned["peak_bytes"], point["peak_bytes"], point["ideal_peak_bytes"])
bar = SHARE_OF_IDEAL * point["ideal_total_saving"]
speed_word = {True: "above the bar beyond the spread", False: "below the bar beyond the spread",
              None: "the bar lies within the spread" if point["repeats"] > 1 else "one repeat, no spread"}
memory_word = {True: "reaches", False: "falls short of", None: "cannot be compared with"}
variant = (f"{largest} SpeechLLM, {encoder} encoder + projector + decoder, "
           f"{point['utterances']} {timing_split} utterances, {device}")
time_finding = (f"removing {point['fraction']:.0%} of the layers saved {point['total_saving']:.0%} of the "
                f"time ({saving_spread} over {point['repeats']} repeats; ideal {point['ideal_total_saving']:.0%}, "
                f"bar {bar:.0%}: {speed_word[speed]})")
memory_finding = (f"peak memory {mem_base:.0f} → {mem_pruned:.0f} MiB, ratio {mem_ratio:.2f} (ideal "
                  f"{mem_ideal:.2f}; its drop {memory_word[memory]} {SHARE_OF_IDEAL:.0%} of the ideal drop; "
                  f"the paper: {paper_ratio:.2f}, ideal {paper_ideal:.2f})")
if point["fraction"] == 0:
    glue_verdict(7, None, "the profile prunes the SpeechLLM at no fraction", variant=variant, recipe=recipe)
else:
    glue_verdict(7, both_halves(speed, memory), f"{time_finding}; {memory_finding}", variant=variant,
                 recipe=recipe)
