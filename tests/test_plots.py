"""plots.angle_heatmaps: Fig. 1's panels share one colour scale (issue 14, item 5), so a cell's colour means
the same distance in every panel, and each panel draws its own optimal path."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from speechllm_redundancy.angles import AngleMatrix  # noqa: E402
from speechllm_redundancy.plots import angle_heatmaps  # noqa: E402


def triangle(num_layers: int, low: float, high: float, seed: int) -> AngleMatrix:
    """A distance matrix of ``num_layers`` layers with values drawn in [low, high] on the measured triangle."""
    values = np.random.default_rng(seed).uniform(low, high, size=(num_layers, num_layers + 1))
    start, size = np.meshgrid(np.arange(num_layers), np.arange(num_layers + 1), indexing="ij")
    values[(size == 0) | (start + size > num_layers)] = np.nan
    return AngleMatrix(values)


def test_panels_share_one_colour_scale_spanning_every_map():
    maps = {"text": triangle(4, 0.1, 0.3, 0), "speech": triangle(4, 0.2, 0.6, 1),
            "lora": triangle(4, 0.15, 0.4, 2), "other family": triangle(6, 0.05, 0.5, 3)}
    fig = angle_heatmaps(maps)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == list(maps)
    every = np.concatenate([m.distances[~np.isnan(m.distances)] for m in maps.values()])
    for ax in panels:
        mesh = ax.collections[0]  # the heatmap's QuadMesh
        assert mesh.get_clim() == pytest.approx((every.min(), every.max())), ax.get_title()
        path = maps[ax.get_title()].optimal_path()
        (line,) = ax.get_lines()
        assert line.get_xdata().tolist() == [path[n] + 0.5 for n in sorted(path)]  # its own path
    assert len(fig.axes) == 2 * len(maps)  # a panel and its colour bar each, no empty panel left on
