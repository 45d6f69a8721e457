"""promote: record the gate's decision in MLflow and, on "promote", make the candidate the champion.

On promote:
1. one MLflow run (experiment `registry.experiment_name`, whose artifact location is `registry.artifact_root`,
   set when the experiment is created) with the flat evaluate/audit metrics, the training params, the adapter
   directory as artifacts under `candidate/` plus `candidate/llmops_spec.json` naming the base model, and the
   gate decision / metrics files under `gate/`;
2. a new version of `registry.model_name` whose source is that artifact directory, tagged with the adapter hash and
   the gate decision (`pipelines.models.promotion`);
3. the alias `registry.alias` (champion) moves to it. The previous champion keeps its version number (rollback =
   moving the alias back: `pipelines.models.registry.set_alias`). That is the `direct` deploy strategy
   (`rollout.strategy`, or the person's choice recorded by pipelines/rollout/choice.py with
   `rollout.choose_strategy`). With `canary` or `shadow` (and a champion to compare with), only the alias
   `challenger` moves and a rollout starts (pipelines/rollout/lifecycle.py): the champion moves when the rollout
   completes on live evidence. The first version ever registered has nothing to be compared with: it becomes
   champion directly, and the record says why.
Idempotent per candidate: a version whose `adapter_sha256` tag equals the candidate's hash is reused (the alias
is moved to it if needed), never duplicated.

On reject: nothing is registered and no alias moves (a challenger alias would invite serving an unvetted model);
the rejection is recorded as an MLflow run tagged `llmops.decision=reject` (once per candidate hash) and in the
promotion record. The promotion record JSON says what happened either way.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Literal, NotRequired, TypedDict

from pipelines.config import StageConfig
from pipelines.errors import StageFailed
from pipelines.io import read_json, write_json, write_text
from pipelines.models import model_card, promotion
from pipelines.models import registry as mlflow_registry
from pipelines.models.lm import dir_sha256
from pipelines.models.registry import RegistryConfig
from pipelines.rollout.config import RolloutConfig

SECTION = "promote"


class Config(StageConfig):
    decision: str
    evaluate_metrics: str
    audit_metrics: str
    candidate_dir: str
    base_model_dir: str
    record: str
    model_card: str  # Markdown card of the registered version (also its MLflow description and a run artifact)


Action = Literal["recorded_rejection", "promoted", "already_champion", "rollout_started", "rollout_running"]


class PromotionRecord(TypedDict):
    """reports/promotion.json."""

    decision: Literal["promote", "reject"]
    model_name: str
    alias: str
    adapter_sha256: str
    tracking_uri: str  # resolved (a relative sqlite path made absolute)
    experiment_id: str
    artifact_location: str
    previous_champion: int | None
    gate_decision: str  # path of the decision file
    action: Action
    run_id: str
    version: int | None
    champion: int | None
    seconds: float
    # reject
    already_recorded: NotRequired[bool]
    failed: NotRequired[list[str]]
    # promote
    created_version: NotRequired[bool]
    alias_moved: NotRequired[bool]
    source: NotRequired[str]
    strategy: NotRequired[str]  # direct | canary | shadow: how the version reaches traffic
    strategy_chosen_by: NotRequired[str]  # "params" or the recorded choice's author ("hitl:<user>")
    strategy_note: NotRequired[str]  # why a configured canary/shadow fell back to direct
    rollout_id: NotRequired[str]  # canary/shadow: the rollout started (or already running) for the version


class PromoteReport(TypedDict):
    decision: Literal["promote", "reject"]
    action: Action
    version: int | None
    champion: int | None
    previous_champion: int | None
    record: str


def _strategy(rollout: RolloutConfig, adapter_hash: str) -> tuple[str, str]:
    """(strategy, chosen_by): the person's recorded choice for this candidate, else rollout.strategy."""
    from pipelines.rollout.choice import choice_for

    chosen = choice_for(rollout, adapter_hash)
    if chosen is not None:
        return str(chosen["strategy"]), str(chosen.get("by") or "choice")
    return rollout.strategy, "params"


def run(cfg: Config, registry: RegistryConfig, rollout: RolloutConfig | None = None) -> PromoteReport:
    """`rollout`: the params' `rollout` section (run_stage passes it; None reads params.yaml's)."""
    started = time.perf_counter()
    if rollout is None:
        from pipelines.rollout.config import load_rollout_config

        rollout = load_rollout_config()
    if not Path(cfg.decision).exists():
        raise FileNotFoundError(f"promote: gate decision not found: {cfg.decision} (run the gate stage)")
    decision = read_json(cfg.decision)
    if decision.get("decision") not in ("promote", "reject"):
        raise StageFailed(f"promote: {cfg.decision} has no valid 'decision' field")
    adapter_hash = dir_sha256(cfg.candidate_dir)
    decided_hash = decision.get("candidate_sha256")
    if decided_hash and decided_hash != adapter_hash:
        raise StageFailed(
            f"promote: the gate decided on candidate {decided_hash[:12]} but {cfg.candidate_dir} is now "
            f"{adapter_hash[:12]}; rerun evaluate, audit and gate"
        )
    client = mlflow_registry.client(registry.tracking_uri)
    exp_id, artifact_location = mlflow_registry.ensure_experiment(client, registry)
    previous = mlflow_registry.get_alias_version(client, registry.model_name, registry.alias)
    previous_champion = int(previous.version) if previous else None
    common = {
        "decision": decision["decision"],
        "model_name": registry.model_name,
        "alias": registry.alias,
        "adapter_sha256": adapter_hash,
        "tracking_uri": mlflow_registry.resolve_tracking_uri(registry.tracking_uri),
        "experiment_id": exp_id,
        "artifact_location": artifact_location,
        "previous_champion": previous_champion,
        "gate_decision": cfg.decision,
    }

    if decision["decision"] == "reject":
        recorded = promotion.recorded_rejection(client, exp_id, adapter_hash)
        run_id = recorded or promotion.log_candidate_run(client, exp_id, cfg, decision, adapter_hash, "reject")
        write_text(cfg.model_card, f"# Candidate {adapter_hash[:12]} rejected by the gate\n\nFailed checks: "
                   f"{', '.join(decision.get('failed', [])) or 'none'}; nothing was registered (MLflow run `{run_id}`)."
                   f"\nThe champion stays version {previous_champion}.\n")
        outcome = dict(action="recorded_rejection", run_id=run_id, version=None, champion=previous_champion,
                       already_recorded=recorded is not None, failed=decision.get("failed", []))
    else:
        version, run_id, created = promotion.register_candidate(
            client, exp_id, registry.model_name, cfg, decision, adapter_hash, previous_champion)
        moved = previous is None or int(previous.version) != int(version.version)
        strategy, chosen_by = _strategy(rollout, adapter_hash)
        deploy: dict = {"strategy": strategy, "strategy_chosen_by": chosen_by}
        if strategy != "direct" and previous is None:
            deploy.update(strategy="direct", strategy_note=f"{strategy} asked, but there is no champion to compare "
                                                           "with: the first version becomes champion directly")
        if deploy["strategy"] != "direct" and moved:
            from pipelines.rollout import lifecycle
            from pipelines.rollout.state import store_for

            current = store_for(rollout.state_path, rollout.state_poll_s).load()
            if current is not None and current.running and current.challenger_version == str(version.version):
                rollout_action, rollout_id = "rollout_running", current.rollout_id
            else:
                state = lifecycle.start(rollout, registry, strategy=strategy, challenger_version=version.version,
                                        champion_version=previous.version, chosen_by=chosen_by)
                rollout_action, rollout_id = "rollout_started", state.rollout_id
            deploy["rollout_id"] = rollout_id
            moved = False
        elif moved:
            client.set_registered_model_alias(registry.model_name, registry.alias, version.version)
            rollout_action = None
        else:
            rollout_action = None
        from pipelines.rollout.lifecycle import challenger_alias

        card = model_card.render(model_name=registry.model_name, version=int(version.version),
                                 alias=challenger_alias() if rollout_action else registry.alias,
                                 run_id=run_id, adapter_sha256=adapter_hash, decision=decision,
                                 base_model=cfg.base_model_dir)
        write_text(cfg.model_card, card)
        client.update_model_version(registry.model_name, version.version, description=card)
        client.log_text(run_id, card, "model_card.md")
        outcome = dict(action=rollout_action or ("promoted" if moved else "already_champion"), run_id=run_id,
                       version=int(version.version),
                       champion=previous_champion if rollout_action else int(version.version),
                       created_version=created, alias_moved=moved, source=version.source, **deploy)
    record: PromotionRecord = {**common, **outcome,  # type: ignore[typeddict-item]
                               "seconds": round(time.perf_counter() - started, 2)}
    write_json(cfg.record, record)
    return {"decision": record["decision"], "action": record["action"], "version": record["version"],
            "champion": record["champion"], "previous_champion": record["previous_champion"], "record": cfg.record}
