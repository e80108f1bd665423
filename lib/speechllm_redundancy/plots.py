"""Figures shared by the book's chapters, so every chapter draws the same quantity the same way.

Only drawing lives here: the numbers come from angles.py, efficiency.py and sweep.py.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from speechllm_redundancy.angles import AngleMatrix


def angle_heatmap(matrix: AngleMatrix, ax=None, title: str = "", vmin: float | None = None,
                  vmax: float | None = None, cbar: bool = True):
    """D(l, n) as a heatmap (x: start layer l, y: block size n) with the optimal path l*(n) drawn on it.

    Cells with l + n > L are blank (undefined). Pass a shared ``vmin``/``vmax`` to compare several maps.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    num_layers = matrix.num_layers
    grid = pd.DataFrame(matrix.distances[:, 1:].T, index=pd.Index(range(1, num_layers + 1), name="block size n"),
                        columns=pd.Index(range(num_layers), name="start layer ℓ"))
    sns.heatmap(grid, ax=ax, cmap="viridis", vmin=vmin, vmax=vmax, cbar=cbar,
                cbar_kws={"label": "angular distance D(ℓ, n)"} if cbar else None)
    path = matrix.optimal_path()
    if path:
        sizes = sorted(path)
        ax.plot([path[n] + 0.5 for n in sizes], [n - 0.5 for n in sizes], color="red", marker="o",
                markersize=3, linewidth=1.2, label="optimal path ℓ*(n)")
        ax.legend(loc="upper right", fontsize="small", frameon=True)
    ax.invert_yaxis()
    step = max(1, num_layers // 8)
    ax.set_xticks(np.arange(0, num_layers, step) + 0.5, [str(i) for i in range(0, num_layers, step)])
    ax.set_yticks(np.arange(0, num_layers, step) + 0.5, [str(i) for i in range(1, num_layers + 1, step)])
    ax.set_title(title)
    return ax


def angle_heatmaps(matrices: Mapping[str, AngleMatrix], ncols: int = 2):
    """One heatmap per named matrix, on a shared colour scale; returns the figure."""
    names = list(matrices)
    ncols = max(1, min(ncols, len(names)))
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.2 * nrows), squeeze=False)
    values = np.concatenate([m.distances[~np.isnan(m.distances)] for m in matrices.values()])
    vmin, vmax = float(values.min()), float(values.max())
    for ax, name in zip(axes.flat, names):
        angle_heatmap(matrices[name], ax=ax, title=name, vmin=vmin, vmax=vmax)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def paths_plot(matrices: Mapping[str, AngleMatrix], ax=None):
    """Optimal paths l*(n) of several maps of the same decoder, overlaid (agreement at a glance)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    rows = [{"block size n": n, "start layer ℓ*(n)": start, "input": name}
            for name, m in matrices.items() for n, start in m.optimal_path().items()]
    sns.lineplot(data=pd.DataFrame(rows), x="block size n", y="start layer ℓ*(n)", hue="input", style="input",
                 markers=True, dashes=False, ax=ax)
    ax.set_title("Optimal pruning path")
    return ax


def efficiency_plot(frame: pd.DataFrame, title: str = ""):
    """Relative prefill / decoding time and peak memory vs fraction removed, with the ideal time.

    ``frame``: ``efficiency.measure_efficiency`` output (optionally with a ``model`` column).
    """
    frame = frame.copy()
    if "model" not in frame:
        frame["model"] = "decoder"
    rows = []
    for model, group in frame.groupby("model", sort=False):
        base = group.iloc[0]
        for _, r in group.iterrows():
            for phase in ("prefill", "decode"):
                rows.append({"model": model, "fraction of decoder layers removed": r["fraction"],
                             "phase": phase, "kind": "measured",
                             "relative time": r[f"{phase}_s"] / base[f"{phase}_s"]})
                rows.append({"model": model, "fraction of decoder layers removed": r["fraction"],
                             "phase": phase, "kind": "ideal",
                             "relative time": 1 - r[f"ideal_{phase}_saving"]})
    times = pd.DataFrame(rows)
    several = times["model"].nunique() > 1
    times["curve"] = (times["model"] + " · " + times["phase"]) if several else times["phase"]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    sns.lineplot(data=times, x="fraction of decoder layers removed", y="relative time", hue="curve",
                 style="kind", markers=True, ax=ax_t, errorbar=None)
    ax_t.set_ylim(bottom=0)
    ax_t.set(ylabel="time relative to the unpruned decoder", title="Wall-clock (measured vs ideal)")
    memory = frame.melt(id_vars=["model", "fraction"], value_vars=["prefill_peak_bytes", "decode_peak_bytes"],
                        var_name="phase", value_name="peak bytes").dropna()
    memory["peak memory (MiB)"] = memory["peak bytes"] / 2**20
    memory["phase"] = memory["phase"].str.replace("_peak_bytes", "")
    memory = memory.rename(columns={"fraction": "fraction of decoder layers removed"})
    if len(memory):
        sns.lineplot(data=memory, x="fraction of decoder layers removed", y="peak memory (MiB)", hue="phase",
                     style="model", markers=True, ax=ax_m, errorbar=None)
    ax_m.set(title="Peak memory (weights + activations + KV cache)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def delta_plot(frame: pd.DataFrame, threshold: float | None = 0.25, hue: str = "strategy",
               metric: str = "relative WER change", ax=None):
    """Relative score change vs fraction removed, one line per ``hue`` and set, the threshold drawn. An
    infinite change (from a score of 0) is left out."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    data = frame.replace({"delta": [np.inf, -np.inf]}, np.nan)
    data = data.rename(columns={"fraction": "fraction of decoder layers removed", "delta": metric})
    sns.lineplot(data=data, x="fraction of decoder layers removed", y=metric, hue=hue if hue in data else None,
                 style="set" if "set" in data else None, markers=True, ax=ax, errorbar=None)
    if threshold is not None:
        ax.axhline(threshold, color="grey", linestyle="--", label=f"threshold {threshold:+.0%}")
    ax.legend(fontsize="small")
    return ax


def delta_panels(frames: Mapping[str, pd.DataFrame], *, panel_size: tuple[float, float] = (6, 4), **kwargs):
    """``delta_plot`` of each titled walk frame side by side on a shared y axis (``kwargs`` go to each); the
    sets drawn in the same order, so they keep their line styles from panel to panel."""
    width, height = panel_size
    fig, axes = plt.subplots(1, len(frames), figsize=(width * len(frames), height), sharey=True,
                             squeeze=False)
    for ax, (title, frame) in zip(axes[0], frames.items()):
        delta_plot(frame.sort_values(["set", "n"]), ax=ax, **kwargs)
        ax.set_title(title)
    fig.tight_layout()
    return fig


def path_panels(panels: Mapping[str, Mapping[str, AngleMatrix]], panel_size: tuple[float, float] = (5, 3.5)):
    """``paths_plot`` of each titled set of maps, side by side."""
    width, height = panel_size
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), height), squeeze=False)
    for ax, (title, matrices) in zip(axes[0], panels.items()):
        paths_plot(matrices, ax=ax)
        ax.set_title(title)
    fig.tight_layout()
    return fig


def removable_by_size(frame: pd.DataFrame, size: str = "parameters (M)",
                      removable: str = "removable fraction"):
    """Each model's removable fraction against its decoder's size (log scale), one point per ``model``."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    sns.scatterplot(data=frame, x=size, y=removable, hue="model", s=80, ax=ax)
    ax.set(xscale="log", title="Removable fraction vs decoder size", ylim=(-0.02, 0.6))
    return fig


def low_distance_curves(frame: pd.DataFrame, threshold: str = "threshold τ",
                        share: str = "share of blocks with D ≤ τ"):
    """The share of each model's blocks within distance τ, for every τ (a wider low-distance region lies
    higher): ``frame`` has one row per model and threshold."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    sns.lineplot(data=frame, x=threshold, y=share, hue="model", ax=ax)
    ax.set_title("Low-distance region of each decoder's map")
    return fig


def speech_llm_costs(frame: pd.DataFrame, utterances: int):
    """The whole SpeechLLM (``efficiency.measure_speech_llm`` rows with a ``model`` column): its median time
    by phase, stacked, with the total's range over the repeats; beside it the peak memory against its
    ideal."""
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{m}\n{f:.0%} removed" for m, f in frame[["model", "fraction"]].values]
    bottom = pd.Series(0.0, index=frame.index)
    for phase in ("encode", "prefill", "decode"):
        ax_t.bar(labels, frame[f"{phase}_s"], bottom=bottom, label=phase)
        bottom += frame[f"{phase}_s"]
    ax_t.errorbar(labels, frame["total_s"], yerr=[frame["total_s"] - frame["total_min_s"],
                                                  frame["total_max_s"] - frame["total_s"]],
                  fmt="o", color="black", capsize=4, label="total: median, fastest to slowest repeat")
    ax_t.set(ylabel=f"seconds for {utterances} utterances", title="Whole SpeechLLM, time by phase")
    ax_t.legend(fontsize=8)
    ax_m.bar(labels, frame["peak_bytes"] / 2**20, label="measured")
    ax_m.scatter(labels, frame["ideal_peak_bytes"] / 2**20, color="black", marker="_", s=600, zorder=3,
                 label="ideal (unpruned less the removed layers)")
    ax_m.set(ylabel="peak memory (MiB)", title="Whole SpeechLLM, peak memory")
    ax_m.legend(fontsize=8)
    for ax in (ax_t, ax_m):
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return fig
