"""`GET /health` (served version per alias, prompt-template hashes; 503 while no champion is loaded) and
`GET /metrics` (Prometheus text). Neither needs a key."""
from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from pipelines.serving.runtime import Runtime, get_runtime

router = APIRouter()


@router.get("/health")
def health(rt: Runtime = Depends(get_runtime)):
    cfg, registry = rt.cfg, rt.registry
    served = dict(rt.slots.served)
    champ = served.get(registry.alias)
    body = {"model": registry.model_name, "alias": registry.alias, "batching": cfg.batching.mode,
            "prompt_templates_sha256": rt.prompt_sha256,
            "aliases": {a: {"version": s.version, "run_id": s.run_id, "adapter_sha256": s.adapter_sha256,
                            "prompt_templates_sha256": s.prompt_sha256, "loaded_at": s.loaded_at}
                        for a, s in served.items()},
            "errors": dict(rt.slots.errors), "reloads": rt.slots.reloads,
            "challenger_traffic_share": cfg.challenger.traffic_share, "auth": not rt.keys.empty,
            "replica": rt.replica, "rollout": _rollout(rt), "shadow": rt.shadow.stats()}
    if champ is None or not champ.engine.alive():
        return JSONResponse(status_code=503, content={**body, "status": "unavailable", "version": None,
                                                      "error": rt.slots.errors.get(registry.alias)})
    return {**body, "status": "ok", "version": champ.version, "run_id": champ.run_id,
            "base_model": champ.base_model, "adapter_sha256": champ.adapter_sha256,
            "system_fingerprint": rt.fingerprint(champ)}


def _rollout(rt: Runtime) -> dict | None:
    """The running rollout as this replica applies it (None: none running, champion only)."""
    state = rt.rollout_state()
    if state is None:
        return None
    loaded = rt.slots.served.get(rt.cfg.challenger.alias)
    return {"rollout_id": state.rollout_id, "strategy": state.strategy, "step_index": state.step_index,
            "challenger_share": state.challenger_share(), "shadowing": state.shadowing(),
            "challenger_version": state.challenger_version,
            "live": loaded is not None and loaded.version == state.challenger_version}


@router.get("/metrics")
def metrics(rt: Runtime = Depends(get_runtime)):
    return Response(rt.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
