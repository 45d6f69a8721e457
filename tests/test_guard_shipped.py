"""The shipped guard detectors (issue 33): they load, score the repo's sample exactly as their manifest recorded,
install only when intact, and train_guard's default (`source: shipped`) serves them; the held-out machinery on
small synthetic data; the source catalogue's licences when ../shared/data is present."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "pipelines/security/artifacts"
SHARED = ROOT.parent / "shared/data"


def test_shipped_detectors_score_the_sample_as_recorded():
    from pipelines.security import ship
    from pipelines.security.detectors import KINDS, load_detector

    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    assert set(manifest["sample_scores"]) == set(KINDS)
    size = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert size < 5e6, f"the shipped artifacts are {size / 1e6:.1f} MB: heads only, never the encoder"
    now = ship.sample_scores(SHIPPED, ROOT / "data/sample")
    for name, rec in manifest["sample_scores"].items():
        assert len(now[name]) == len(rec) > 0
        np.testing.assert_allclose(now[name], rec, atol=1e-4, err_msg=name)
        det = load_detector(SHIPPED, name)
        assert det.threshold == pytest.approx(manifest["thresholds"][name])
    # the recorded scores are not degenerate: the sample's attacks score above its benign prompts on average
    rows = ship.sample_rows(ROOT / "data/sample")["injection"]
    y = np.array([r["label"] for r in rows])
    s = np.array(manifest["sample_scores"]["injection"])
    assert 0 < y.sum() < len(y) and s[y == 1].mean() > s[y == 0].mean()


def test_install_refuses_a_tampered_artifact_and_train_guard_serves_the_shipped_ones(tmp_path):
    from pipelines.errors import StageFailed
    from pipelines.security import ship
    from pipelines.stages import train_guard
    from pipelines.stages.registry import stage_config

    cfg = stage_config("train_guard", output_dir=str(tmp_path / "models"), metrics=str(tmp_path / "guard.json"),
                       report=str(tmp_path / "guard.md"))
    assert cfg.source == "shipped"  # a fresh clone's default
    rep = train_guard.run(cfg)
    held = json.loads((SHIPPED / "heldout.json").read_text())
    assert rep["detectors"]["injection"]["threshold"] == held["injection"]["threshold"]
    assert (tmp_path / "models/injection/model.npz").read_bytes() == (SHIPPED / "injection/model.npz").read_bytes()
    m = json.loads((tmp_path / "guard.json").read_text())
    assert m["version"] == json.loads((SHIPPED / "manifest.json").read_text())["version"]
    assert set(m["detectors"]["injection"]["heldout_targets"]) == {t[0] for t in ship.TARGETS}
    bad = tmp_path / "bad"
    shutil.copytree(SHIPPED, bad)
    meta = json.loads((bad / "injection/meta.json").read_text())
    meta["threshold"] = 0.01
    (bad / "injection/meta.json").write_text(json.dumps(meta))
    with pytest.raises(StageFailed, match="does not match its manifest"):
        train_guard.run(cfg.model_copy(update={"shipped": cfg.shipped.model_copy(update={"dir": str(bad)}),
                                               "output_dir": str(tmp_path / "m2")}))
    with pytest.raises(StageFailed, match="needs the public datasets"):
        train_guard.run(cfg.model_copy(update={"source": "rebuild", "shared_root": str(tmp_path / "nothing")}))


def test_leave_one_family_out_and_the_threshold_that_keeps_every_benign_category_in_budget():
    from pipelines.security import crossval

    rng = np.random.default_rng(0)
    rows, X = [], []
    for fam, cat, label, centre in (("a", "persona", 0, -1.0), ("b", "code", 0, -1.2), ("c", "jailbreak", 1, 1.0),
                                    ("d", "harmful", 1, 1.3), ("e", "dangerous_sounding", 0, -0.6)):
        for _ in range(40):
            rows.append({"family": fam, "source": fam, "category": cat, "label": label, "licence": "x"})
            X.append(rng.normal(centre, 0.5, size=6))
    X = np.array(X, dtype=np.float32)
    feats = {"X": X, "Xc": X, "owner": np.arange(len(X))}
    oof = crossval.leave_one_family_out(rows, feats, "logreg")
    assert not np.isnan(oof).any()
    thr = crossval.threshold_from_oof(rows, oof, 0.05)
    cat = np.array([r["category"] for r in rows])
    for c in ("persona", "code", "dangerous_sounding"):  # every benign category within budget, not just the pooled
        assert np.mean(oof[cat == c] >= thr) <= 0.05
    t = crossval.table(rows, oof, thr)
    assert t["sources"]["c"]["flagged_rate"] > 0.8 and t["categories"]["persona"]["label"] == 0
    head = crossval.fit("mlp_torch", X, np.array([r["label"] for r in rows]), 0, crossval.balance_weights(rows))
    assert len(head.layers) == 2 and head.predict(X[:3]).shape == (3,)


@pytest.mark.skipif(not (SHARED / "security").is_dir(), reason="../shared/data is not on this machine")
def test_source_catalogue_records_a_licence_and_a_category_for_every_source():
    from pipelines.security import sources

    rows = sources.input_sources(SHARED, {"default": 20})
    cats = {r["category"] for r in rows}
    assert {"persona", "system", "code", "multipart", "non_english", "dangerous_sounding"} <= cats
    assert {"jailbreak", "injection", "indirect", "rephrasing", "multi_turn"} <= cats
    for r in rows:
        assert r["licence"] and r["family"] and r["text"]
        assert r["category"] in (sources.BENIGN_CATEGORIES if r["label"] == 0 else sources.ATTACK_CATEGORIES), r
    pairs = sources.judge_pairs(SHARED, {"default": 10})
    assert {p["label"] for p in pairs} == {0, 1} and all(p["licence"] for p in pairs)
