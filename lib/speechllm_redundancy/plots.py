"""Figures shared by the book's chapters, so every chapter draws the same quantity the same way.

Only drawing lives here: the numbers come from angles.py, efficiency.py and sweep.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
    """Relative score change vs fraction removed, one line per ``hue`` and set, the threshold drawn."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    data = frame.rename(columns={"fraction": "fraction of decoder layers removed", "delta": metric})
    sns.lineplot(data=data, x="fraction of decoder layers removed", y=metric, hue=hue if hue in data else None,
                 style="set" if "set" in data else None, markers=True, ax=ax, errorbar=None)
    if threshold is not None:
        ax.axhline(threshold, color="grey", linestyle="--", label=f"threshold {threshold:+.0%}")
    ax.legend(fontsize="small")
    return ax


def as_percent(values: Sequence[float]) -> list[str]:
    return [f"{v:.1%}" for v in values]
