"""Figures: valid PNGs whose drawn data is the input (the Axes are inspected before saving)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from multiturbo import plots


@pytest.fixture
def captured(monkeypatch):
    """Every figure saved by multiturbo.plots, kept for inspection."""
    figures = []
    save = plots._save

    def keep(fig, path):
        figures.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def assert_png(path):
    assert path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
        im.verify()


def test_align_uniform_scatter(tmp_path, captured):
    points = [
        {"label": "vanilla", "alignment": 1.2, "uniformity": -1.0, "group": "audio~text"},
        {"label": "turbo", "alignment": 0.6, "uniformity": -2.5, "group": "audio~text"},
        {"label": "turbo", "alignment": 0.7, "uniformity": -2.4, "group": "audio~image"},
    ]
    data = plots.plot_align_uniform(points, tmp_path / "au.png")
    assert_png(tmp_path / "au.png")
    assert list(data) == ["vanilla", "turbo"]
    np.testing.assert_allclose(data["turbo"]["alignment"], [0.6, 0.7])
    ax = captured[0].axes[0]
    drawn = np.concatenate([c.get_offsets() for c in ax.collections])
    np.testing.assert_allclose(sorted(map(tuple, drawn)), sorted((p["uniformity"], p["alignment"]) for p in points))
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["vanilla (audio~text)", "turbo (audio~text)", "turbo (audio~image)"]
    colours = {tuple(c.get_facecolor()[0]) for c in ax.collections}
    assert len(colours) == 2  # one colour per label
    with pytest.raises(ValueError):
        plots.plot_align_uniform([], tmp_path / "none.png")


def test_projection_keeps_a_planar_configuration():
    # points in a 2-D plane of R^8: after projection, pairwise angles are unchanged
    a = torch.tensor([0.1, 0.9, 2.0, 3.0, -2.2, -0.4], dtype=torch.float64)
    planar = torch.stack([a.cos(), a.sin()], 1)
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))
    x = planar @ q[:2]  # [6, 8]
    points, angles = plots.circle_points(x)
    np.testing.assert_allclose(np.linalg.norm(points, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.abs(points @ points.T), np.abs((planar @ planar.T).numpy()), atol=1e-5)


def test_uncentred_projection_keeps_a_cluster_clustered():
    g = torch.Generator().manual_seed(0)
    centre = F.normalize(torch.randn(16, generator=g), dim=0)
    x = F.normalize(centre + 0.05 * torch.randn(200, 16, generator=g), dim=1)
    _, angles = plots.circle_points(x)
    r = np.hypot(np.cos(angles).mean(), np.sin(angles).mean())
    assert r > 0.9  # the angles stay concentrated (centred PCA would scatter them)


def test_angle_density_integrates_to_one_and_peaks_at_the_cluster():
    grid = np.linspace(-np.pi, np.pi, 721)
    rng = np.random.default_rng(0)
    angles = np.angle(np.exp(1j * (np.pi + 0.1 * rng.standard_normal(300))))  # across the +-pi cut
    d = plots.angle_density(angles, grid)
    assert np.trapezoid(d, grid) == pytest.approx(1.0, abs=1e-3)
    assert min(d[0], d[-1]) > 10 * d[360]  # mass at +-pi, none at 0
    even = np.linspace(-np.pi, np.pi, 400, endpoint=False)
    np.testing.assert_allclose(plots.angle_density(even, grid), 1 / (2 * np.pi), rtol=0.02)


def test_circle_density_figure(tmp_path, captured):
    g = torch.Generator().manual_seed(1)
    emb = {m: F.normalize(torch.randn(30, 8, generator=g), dim=1) for m in ("audio", "text")}
    labels = torch.arange(30) % 3
    data = plots.plot_circle_density(emb, tmp_path / "emb.png", labels=labels, classes=["a", "b", "c"])
    assert_png(tmp_path / "emb.png")
    fig = captured[0]
    top, bottom = fig.axes[:2], fig.axes[2:4]
    assert [ax.get_title() for ax in top] == ["audio", "text"]
    for ax, m in zip(top, emb):
        drawn = np.concatenate([c.get_offsets() for c in ax.collections])
        np.testing.assert_allclose(sorted(map(tuple, drawn)), sorted(map(tuple, data[m]["points"])))
        np.testing.assert_allclose(np.linalg.norm(drawn, axis=1), 1.0, atol=1e-6)
        expected, _ = plots.circle_points(emb[m])
        np.testing.assert_allclose(data[m]["points"], expected)
        assert ax.images, "the 2-D KDE heat map is drawn"
    for ax, m in zip(bottom, emb):
        line = ax.get_lines()[0]
        np.testing.assert_allclose(line.get_ydata(), data[m]["density"])
        np.testing.assert_allclose(data[m]["density"], plots.angle_density(data[m]["angles"], data[m]["grid"]))


def test_confusion_figure(tmp_path, captured):
    cm = [[5, 1, 0], [2, 3, 1], [0, 0, 4]]
    out = plots.plot_confusion(cm, ["neu", "hap", "ang"], tmp_path / "cm.png")
    assert_png(tmp_path / "cm.png")
    np.testing.assert_array_equal(out, cm)
    ax = captured[0].axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), np.array(cm) / np.array(cm).sum(1, keepdims=True))
    assert [t.get_text() for t in ax.texts] == [str(v) for row in cm for v in row]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["neu", "hap", "ang"]
    with pytest.raises(ValueError, match="2 x 2"):
        plots.plot_confusion(cm, ["a", "b"], tmp_path / "bad.png")


def test_learning_curves(tmp_path, captured):
    records = [
        {"epoch": e, "train": {"loss": 3.0 / e, "ce": 1.0 / e, "contrastive": 5.0 / e, "temperature": 0.07},
         "terms": {"audio1~audio2": 2.0 / e, "audio1~text1": 4.0 / e},
         "val": {"wa": 0.3 * e, "ua": 0.25 * e, "f1": 0.2 * e, "loss": 1.1 / e, "confusion": [[1, 0], [0, 1]]},
         "best": e == 2}
        for e in (1, 2, 3)
    ]
    series = plots.plot_learning_curves(records, tmp_path / "lc.png")
    assert_png(tmp_path / "lc.png")
    assert "val/confusion" not in series
    np.testing.assert_allclose(series["term/audio1~text1"][1], [4.0, 2.0, 4.0 / 3])
    lines = {(ax.get_title(), line.get_label()): line for ax in captured[0].axes for line in ax.get_lines() if not line.get_label().startswith("_")}
    np.testing.assert_allclose(lines[("train losses", "ce")].get_ydata(), [1.0, 0.5, 1.0 / 3])
    np.testing.assert_allclose(lines[("Turbo terms (train)", "audio1~audio2")].get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(lines[("validation metrics", "ua")].get_ydata(), [0.25, 0.5, 0.75])
    np.testing.assert_allclose(lines[("validation loss", "loss")].get_ydata(), [1.1, 0.55, 1.1 / 3])
    assert "best epoch 2" in captured[0]._suptitle.get_text()


def test_learning_curves_show_each_param_groups_learning_rate(tmp_path, captured):
    records = [{"epoch": e, "train": {"loss": 1.0}, "val": {"ua": 0.5}, "lr": {"audio": 1e-5 * (3 - e), "head": 1e-3 / e}} for e in (1, 2)]
    series = plots.plot_learning_curves(records, tmp_path / "lc.png")
    assert_png(tmp_path / "lc.png")
    np.testing.assert_allclose(series["lr/head"][1], [1e-3, 5e-4])
    axes = {ax.get_title(): ax for ax in captured[0].axes}
    lines = {line.get_label(): line for line in axes["learning rate (end of epoch)"].get_lines()}
    np.testing.assert_allclose(lines["audio"].get_ydata(), [2e-5, 1e-5])
    assert axes["learning rate (end of epoch)"].get_yscale() == "log"


def test_learning_curves_of_a_vanilla_run_with_nan(tmp_path):
    records = [{"epoch": 1, "train": {"loss": 1.0, "ce": 1.0, "contrastive": 0.0}, "terms": {}, "val": {"wa": None, "ua": 0.5}}]
    series = plots.plot_learning_curves(records, tmp_path / "lc.png")
    assert math.isnan(series["val/wa"][1][0])
    assert_png(tmp_path / "lc.png")


@pytest.mark.parametrize("seed", range(3))
def test_the_numpy_kde_equals_scipys_gaussian_kde(seed):
    """plots.gaussian_kde replaces scipy.stats.gaussian_kde (whose import cost a second per run)."""
    from scipy.stats import gaussian_kde as scipy_kde

    rng = np.random.default_rng(seed)
    points = rng.normal(size=(50 + 40 * seed, 2)) @ np.array([[0.5, 0.2], [0.0, 0.3]])
    xx, yy, density = plots.plane_density(points, size=40)
    np.testing.assert_allclose(density, scipy_kde(points.T)(np.vstack([xx.ravel(), yy.ravel()])).reshape(xx.shape), rtol=1e-8, atol=1e-12)
    angles = rng.vonmises(1.0, 2.0, 30 + seed)
    grid = np.linspace(-np.pi, np.pi, 181)
    wrapped = np.concatenate([angles - 2 * np.pi, angles, angles + 2 * np.pi])
    factor = plots.angle_bandwidth(angles) / float(np.sqrt(np.cov(wrapped)))
    np.testing.assert_allclose(plots.angle_density(angles, grid), 3.0 * scipy_kde(wrapped, bw_method=factor)(grid), rtol=1e-8, atol=1e-12)
    assert plots.plane_density(np.c_[np.arange(5.0), 2 * np.arange(5.0)]) is None  # on a line: singular
    assert plots.plane_density(points[:2]) is None
