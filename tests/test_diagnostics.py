"""Collapse diagnostics: per-epoch alignment, uniformity, recall@1 and terms against log(B), and warnings."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from multiturbo.config import check_config, validate_config
from multiturbo.diagnostics import TERM_AT_LOG_B, collapse_warnings, representation_diagnostics, term_ratios
from multiturbo.run import run_experiment


def _views(collapsed: bool, n: int = 40, d: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if collapsed:  # every item at one point (per modality), up to tiny noise
        a = torch.ones(n, d) + 1e-4 * torch.randn(n, d, generator=g)
        t = -torch.ones(n, d) + 1e-4 * torch.randn(n, d, generator=g)
    else:  # spread, and each item's text close to its audio
        a = torch.randn(n, d, generator=g)
        t = a + 0.05 * torch.randn(n, d, generator=g)
    return {"audio": F.normalize(a, dim=-1), "text": F.normalize(t, dim=-1)}


def test_collapsed_space_gives_warnings_naming_terms_and_fixes():
    B = 32
    d = representation_diagnostics(_views(True), None, {"audio1~text1": math.log(B) * 0.999}, B)
    assert d["uniformity"]["audio"] > -0.01 and d["recall@1"]["audio->text"] < 0.1
    assert d["term_ratio"]["audio1~text1"] == pytest.approx(0.999)
    warnings = collapse_warnings(d, epoch=3, previous={"audio1~text1": 1.0})  # on a plateau at log(B)
    assert len(warnings) == 2
    assert "audio1~text1" in warnings[0] and "log(B) = 3.466" in warnings[0]
    assert "Uniformity approaches 0" in warnings[1] and "audio" in warnings[1] and "text" in warnings[1]
    assert all("Likely causes and fixes" in w and "feature_norm" in w for w in warnings)
    # a term still falling towards log(B) (start-up), or without a previous epoch, is not judged; uniformity is
    assert [w for w in collapse_warnings(d, epoch=2, previous={"audio1~text1": 1.2}) if "sit at" in w] == []
    assert [w for w in collapse_warnings(d, epoch=1) if "sit at" in w] == []


def test_a_cross_term_near_log_b_that_already_retrieves_is_not_called_collapsed():
    B = 32
    d = representation_diagnostics(_views(False), None, {"audio1~text1": 0.99 * math.log(B), "audio1~audio2": 0.99 * math.log(B)}, B)
    assert d["recall@1"]["audio->text"] == 1.0
    warnings = collapse_warnings(d, epoch=4, previous={"audio1~text1": 0.99, "audio1~audio2": 0.99})
    assert len(warnings) == 1 and "audio1~audio2" in warnings[0] and "audio1~text1" not in warnings[0]


def test_a_few_lucky_hits_on_a_small_split_do_not_count_as_retrieval():
    """120 validation items: 2 hits of 120 per direction are twice chance but likely by luck (binomial p about
    0.14 pooled), so the plateau at log(B) is reported; 8 hits per direction are not luck."""
    diag = {"term_ratio": {"audio1~text1": 1.002}, "uniformity": {"audio": -0.02, "text": -0.2}, "log_b": math.log(32),
            "chance_recall@1": 1 / 120}
    lucky = collapse_warnings({**diag, "recall@1": {"audio->text": 2 / 120, "text->audio": 2 / 120}}, 4, {"audio1~text1": 1.005})
    assert any("sit at log(B)" in w and "audio1~text1" in w for w in lucky)
    real = collapse_warnings({**diag, "recall@1": {"audio->text": 8 / 120, "text->audio": 8 / 120}}, 4, {"audio1~text1": 1.005})
    assert not any("sit at log(B)" in w for w in real)


def test_spread_aligned_space_gives_no_warning():
    B = 32
    d = representation_diagnostics(_views(False), None, {"audio1~text1": 0.5 * math.log(B)}, B)
    assert d["uniformity"]["audio"] < -2 and d["recall@1"]["audio->text"] == 1.0
    assert d["chance_recall@1"] == pytest.approx(1 / 40)
    assert collapse_warnings(d, epoch=5) == []


def test_term_ratio_threshold_is_inclusive_and_batch_of_one_has_none():
    assert term_ratios({"x": TERM_AT_LOG_B * math.log(8)}, 8)["x"] == pytest.approx(TERM_AT_LOG_B)
    assert term_ratios({"x": 1.0}, 1) == {}


def test_training_logs_diagnostics_every_epoch(tiny_raw, tmp_path):
    out = tmp_path / "run"
    run_experiment(check_config(validate_config(tiny_raw)), out)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for r in records:
        diag = r["diagnostics"]
        assert set(diag["uniformity"]) == {"audio", "text"} and set(diag["alignment"]) == {"audio~text"}
        assert set(diag["recall@1"]) == {"audio->text", "text->audio"}
        assert set(diag["term_ratio"]) == set(r["terms"]) and diag["log_b"] == pytest.approx(math.log(8))
        for name, value in r["terms"].items():
            assert diag["term_ratio"][name] == pytest.approx(value / math.log(8))


def test_diagnostics_can_be_switched_off(tiny_raw, tmp_path):
    tiny_raw["train"]["diagnostics"] = False
    tiny_raw["train"]["epochs"] = 1
    out = tmp_path / "run"
    run_experiment(check_config(validate_config(tiny_raw)), out)
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert "diagnostics" not in record and "warnings" not in record


def test_term_names_are_parsed_with_the_modality_names_even_when_they_end_in_digits():
    from multiturbo.diagnostics import is_cross_modal
    from multiturbo.loss import pair_names, term_modalities

    names = pair_names(["cam1", "cam2"], 2, True, True)  # "cam11~cam12", "cam11~cam21", ...
    cross = [n for n in names if is_cross_modal(n, ["cam1", "cam2"])]
    assert len(cross) == 4 and not is_cross_modal("cam11~cam12", ["cam1", "cam2"])
    assert term_modalities("audio1~text2", ["audio", "text"]) == ("audio", "text")
    with pytest.raises(ValueError, match="none of the modalities"):
        term_modalities("video1~text1", ["audio", "text"])
