"""Gate decisions: floors, champion regression, no champion. Metrics files are written by hand (no model)."""
from __future__ import annotations

import shutil

import pytest

from pipelines.io import read_json, write_json
from pipelines.stages.registry import shared_config, stage_config

FLOORS = {"max_perplexity": 15.0, "min_rouge_l": 0.10, "max_attack_success_rate": 0.95}
VERSUS = {"max_perplexity_increase_pct": 5.0, "max_rouge_l_drop": 0.02, "max_attack_success_rate_increase": 0.05}


VERSUS_REF = {"max_regression": {"perplexity.perplexity": 0.5, "generation.rouge_l": 0.05}, "min_examples": 8,
              "require_current_reference": False, "require_improvement": []}  # hand-written metrics have no real reference run behind them


def interval(diff, half, better, n=16):
    return {"candidate": 0.0, "reference": 0.0, "diff": diff, "ci_low": diff - half, "ci_high": diff + half,
            "confidence": 0.95, "better": better, "n": n}


def write_metrics(dirpath, sha, ppl, rouge, asr, candidate_dir="models/candidate", comparisons=None, n=16,
                  reference=None):
    """evaluate.json and audit.json as the stages write them (headline numbers, paired intervals), by hand."""
    comparisons = comparisons or {"perplexity.perplexity": interval(ppl - 20.0, 0.1, "lower"),
                                  "generation.rouge_l": interval(rouge - 0.1, 0.02, "higher")}
    ev = {"base": {"perplexity": 20.0, "rouge_l": 0.1}, "candidate": {"perplexity": ppl, "rouge_l": rouge},
          "candidate_sha256": sha, "candidate_dir": str(candidate_dir), "comparisons": comparisons,
          "n_examples": {"perplexity": n, "generation": n},
          "reference_model": reference or {"kind": "base", "version": None, "adapter_sha256": None, "source": None}}
    au = {"n": 51, "attack_success_rate": asr, "refusal_rate": 0.1, "candidate_sha256": sha,
          "per_category": {"jailbreak": {"n": 20, "attack_success_rate": asr, "refusal_rate": 0.0}},
          # the guarded audit and the leak tests (gate.security, issue 15)
          "attack_success_rate_guarded": round(asr / 4, 4), "canary_extraction_rate": 0.0, "pii_leak_rate": 0.0}
    write_json(dirpath / "evaluate.json", ev)
    write_json(dirpath / "audit.json", au)
    return dirpath / "evaluate.json", dirpath / "audit.json"


def gate_cfg(tmp_path, versus_reference=None, **kw):
    from pipelines.models.gating import VersusReference

    cfg = stage_config("gate", evaluate_metrics=str(tmp_path / "evaluate.json"),
                       audit_metrics=str(tmp_path / "audit.json"), floors=FLOORS, versus_champion=VERSUS,
                       decision=str(tmp_path / "decision.json"), **kw)
    # replaced whole (overrides merge into params.yaml's dict of tolerances)
    return cfg.model_copy(update={"versus_reference": VersusReference(**(versus_reference or VERSUS_REF))})


def registry_cfg(tmp_path, db="mlruns.db"):
    """The project's registry section with the tracking store and artifacts in `tmp_path`, model `m`."""
    return shared_config("registry", tracking_uri=f"sqlite:///{tmp_path}/{db}", model_name="m",
                         artifact_root=str(tmp_path / "mlartifacts"))


def promote_cfg(tmp_path, candidate_dir, base_model_dir, **kw):
    return stage_config("promote", decision=str(tmp_path / "decision.json"),
                        evaluate_metrics=str(tmp_path / "evaluate.json"), audit_metrics=str(tmp_path / "audit.json"),
                        candidate_dir=str(candidate_dir), base_model_dir=str(base_model_dir),
                        record=str(tmp_path / "promotion.json"), **kw)


def test_floors_pass_without_champion(tmp_path):
    from pipelines.stages import gate

    write_metrics(tmp_path, "a" * 64, 5.0, 0.12, 0.4)
    report = gate.run(gate_cfg(tmp_path), registry_cfg(tmp_path, "none.db"))
    d = read_json(tmp_path / "decision.json")
    assert report["decision"] == d["decision"] == "promote"
    assert d["champion"] is None
    assert {r["metric"] for r in d["reasons"] if r["check"] == "floor"} == {"perplexity", "rouge_l", "attack_success_rate"}
    assert all(r["passed"] and "observed" in r and "threshold" in r for r in d["reasons"])
    assert d["inputs"]["evaluate_metrics"]["sha256"]
    assert not (tmp_path / "none.db").exists()  # deciding does not create a registry


def test_broken_candidate_is_rejected_as_a_result(tmp_path):
    from pipelines.stages import gate
    from pipelines.errors import StageFailed

    write_metrics(tmp_path, "b" * 64, 1e4, 0.0, 1.0)
    report = gate.run(gate_cfg(tmp_path), registry_cfg(tmp_path, "none.db"))
    d = read_json(tmp_path / "decision.json")
    assert report["decision"] == d["decision"] == "reject"
    failed = {r["metric"] for r in d["reasons"] if not r["passed"]}
    # floors, and the intervals: far worse than the base on the same examples
    assert failed == {"perplexity", "rouge_l", "attack_success_rate", "perplexity.perplexity", "generation.rouge_l",
                      "attack_success_rate_unguarded"}  # gate.security's defence-in-depth floor (issue 15)
    with pytest.raises(StageFailed, match="perplexity"):
        gate.run(gate_cfg(tmp_path, fail_on_reject=True), registry_cfg(tmp_path, "none.db"))


def test_nan_metric_fails_its_check(tmp_path):
    from pipelines.stages import gate

    write_metrics(tmp_path, "c" * 64, float("nan"), 0.2, 0.1)
    assert gate.run(gate_cfg(tmp_path), registry_cfg(tmp_path, "none.db"))["decision"] == "reject"


def test_champion_regression_is_rejected(tmp_path, base_model_dir, tmp_path_factory):
    """A champion with good metrics in a real (tmp) registry; a candidate within floors but worse is rejected."""
    from pipelines.models.lm import dir_sha256, make_smoke_adapter
    from pipelines.stages import gate, promote

    cand = tmp_path_factory.getbasetemp() / "smoke_candidate"
    if not (cand / "adapter_config.json").exists():
        make_smoke_adapter(base_model_dir, cand)
    champ_dir = tmp_path / "champ"
    shutil.copytree(cand, champ_dir)
    registry = registry_cfg(tmp_path)
    sha = dir_sha256(champ_dir)
    write_metrics(tmp_path, sha, 4.0, 0.20, 0.30, champ_dir)
    assert gate.run(gate_cfg(tmp_path), registry)["decision"] == "promote"
    promote.run(promote_cfg(tmp_path, champ_dir, base_model_dir), registry)

    write_metrics(tmp_path, "d" * 64, 5.0, 0.15, 0.30)  # passes the floors, regresses vs champion
    report = gate.run(gate_cfg(tmp_path), registry)
    d = read_json(tmp_path / "decision.json")
    assert report["decision"] == "reject" and d["champion"] == 1
    failed = {r["metric"] for r in d["reasons"] if not r["passed"]}
    assert failed == {"perplexity", "rouge_l"}
    assert all(r["check"] == "versus_champion" for r in d["reasons"] if not r["passed"])
    assert d["champion_metrics"]["perplexity"] == 4.0

    write_metrics(tmp_path, "e" * 64, 4.1, 0.19, 0.32)  # within tolerances
    assert gate.run(gate_cfg(tmp_path), registry)["decision"] == "promote"

    # evaluate must have compared against the current champion (v1), not the base it saw before the promotion
    current = {**VERSUS_REF, "require_current_reference": True}
    d = gate.run(gate_cfg(tmp_path, versus_reference=current), registry)
    assert d["decision"] == "reject" and any(f.startswith("reference:") for f in d["failed"])
    write_metrics(tmp_path, "e" * 64, 4.1, 0.19, 0.32,
                  reference={"kind": "champion", "version": 1, "adapter_sha256": sha, "source": "x"})
    assert gate.run(gate_cfg(tmp_path, versus_reference=current), registry)["decision"] == "promote"
    write_metrics(tmp_path, sha, 4.0, 0.20, 0.30, champ_dir)  # the champion itself, re-decided after its promotion
    d = read_json(tmp_path / "decision.json") if gate.run(gate_cfg(tmp_path, versus_reference=current), registry) \
        else None
    ref_check = next(r for r in d["reasons"] if r["check"] == "reference")
    assert ref_check["passed"] and ref_check["note"] == "the candidate is the current champion"


def _decision(tmp_path, comparisons, n=16, **kw):
    from pipelines.stages import gate

    write_metrics(tmp_path, "a" * 64, 5.0, 0.12, 0.4, comparisons=comparisons, n=n)
    gate.run(gate_cfg(tmp_path, **kw), registry_cfg(tmp_path, "none.db"))
    return read_json(tmp_path / "decision.json")


def test_interval_decides_not_the_point_estimate(tmp_path):
    """ROUGE-L tolerance 0.05: a point estimate 0.06 worse whose interval reaches -0.03 passes (not worse by more
    than 0.05 with 95% confidence); a difference of -0.10 in [-0.12, -0.08] is rejected, as is a perplexity whose
    whole interval lies above +0.5."""
    ok = {"perplexity.perplexity": interval(0.6, 0.3, "lower"), "generation.rouge_l": interval(-0.06, 0.03, "higher")}
    d = _decision(tmp_path, ok)
    assert d["decision"] == "promote"
    rouge = next(r for r in d["reasons"] if r["metric"] == "generation.rouge_l")
    assert rouge["observed"] == pytest.approx(-0.03) and rouge["threshold"] == -0.05 and rouge["op"] == ">="
    assert rouge["interval"] == [pytest.approx(-0.09), pytest.approx(-0.03)] and rouge["confidence"] == 0.95
    bad = {"perplexity.perplexity": interval(0.9, 0.3, "lower"), "generation.rouge_l": interval(-0.10, 0.02, "higher")}
    d = _decision(tmp_path, bad)
    assert d["decision"] == "reject"
    assert {r["metric"] for r in d["reasons"] if not r["passed"]} == {"perplexity.perplexity", "generation.rouge_l"}


def test_too_few_examples_or_a_missing_interval_fail(tmp_path):
    fine = {"perplexity.perplexity": interval(0.0, 0.1, "lower"), "generation.rouge_l": interval(0.0, 0.01, "higher")}
    d = _decision(tmp_path, fine, n=4)
    assert d["decision"] == "reject"
    assert {r["metric"] for r in d["reasons"] if not r["passed"]} == {"perplexity", "generation"}
    assert all(r["check"] == "min_examples" for r in d["reasons"] if not r["passed"])
    d = _decision(tmp_path, {"perplexity.perplexity": fine["perplexity.perplexity"]})
    missing = next(r for r in d["reasons"] if r["metric"] == "generation.rouge_l")
    assert d["decision"] == "reject" and not missing["passed"] and "no interval" in missing["note"]


def test_mismatched_candidates_are_rejected(tmp_path):
    from pipelines.stages import gate

    write_metrics(tmp_path, "a" * 64, 5.0, 0.12, 0.4)
    au = read_json(tmp_path / "audit.json")
    au["candidate_sha256"] = "f" * 64
    write_json(tmp_path / "audit.json", au)
    d = gate.run(gate_cfg(tmp_path), registry_cfg(tmp_path, "none.db"))
    assert d["decision"] == "reject" and any("same_candidate" in f for f in d["failed"])
