"""`llmops` command line: the same stage functions that dvc repro and Airflow run."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from pipelines.config import ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="LLMOps lifecycle stages and serving.")


@app.command("stages")
def list_stages() -> None:
    """List the stages in pipeline order."""
    from pipelines.stages.registry import STAGES

    for name in STAGES:
        typer.echo(name)


@app.command("run")
def run(
    stage: str = typer.Argument(..., help="stage name, see `llmops stages`"),
    params: Optional[Path] = typer.Option(None, "--params", "-p", help="params.yaml to read (default: repo root)"),
) -> None:
    """Run one stage with its section of params.yaml and print its report as JSON."""
    from pipelines.stages.registry import run_stage
    from pipelines.errors import StageFailed

    try:
        report = run_stage(stage, params)
    except (ConfigError, KeyError, FileNotFoundError, StageFailed) as exc:
        typer.secho(f"{stage}: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    typer.echo(json.dumps(report, indent=2, sort_keys=True, default=str))


@app.command("summary")
def summary(root: Path = typer.Option(Path("."), help="repository root")) -> None:
    """Print the gate decision and where each stage's output lies."""
    from pipelines.summary import render_summary

    typer.echo(render_summary(root))


@app.command("serve")
def serve(
    params: Optional[Path] = typer.Option(None, "--params", "-p"),
    host: Optional[str] = typer.Option(None, help="bind address (default: params.yaml serve.host)"),
    port: Optional[int] = typer.Option(None, help="port (default: params.yaml serve.port)"),
    engine: Optional[str] = typer.Option(None, help="uvicorn (one process) or ray (Ray Serve autoscaling); "
                                                    "default: params.yaml serve.engine"),
) -> None:
    """Serve the champion (params.yaml registry: model_name@alias) over the OpenAI-compatible HTTP API."""
    from pipelines.config import load_section
    from pipelines.models.registry import RegistryConfig
    from pipelines.serving.config import ServeConfig

    try:
        cfg = load_section("serve", ServeConfig, params)
        registry = load_section("registry", RegistryConfig, params)
    except ConfigError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    cfg = cfg.model_copy(update={k: v for k, v in (("host", host), ("port", port), ("engine", engine)) if v})
    try:
        if cfg.engine == "ray":
            from pipelines.serving.ray_app import run_ray

            run_ray(cfg, registry)
            return
        import uvicorn

        from pipelines.serving.app import create_app

        app = create_app(cfg, registry)
    except (RuntimeError, FileNotFoundError, ValueError) as exc:
        typer.secho(f"serve: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info")


@app.command("rollback")
def rollback(
    params: Optional[Path] = typer.Option(None, "--params", "-p"),
    to: Optional[int] = typer.Option(None, "--to", help="version to make champion (default: the previous one)"),
) -> None:
    """Move the champion alias back to the previous champion; running servers pick it up without a restart."""
    from pipelines.config import load_section
    from pipelines.models.registry import RegistryConfig
    from pipelines.serving.rollback import rollback as do_rollback

    try:
        registry = load_section("registry", RegistryConfig, params)
        moved = do_rollback(registry, to)
    except (ConfigError, ValueError) as exc:
        typer.secho(f"rollback: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    except Exception as exc:  # an unknown version: MlflowException
        typer.secho(f"rollback: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    typer.echo(f"{moved['model_name']}@{moved['alias']}: v{moved['previous_version']} -> v{moved['version']}")


@app.command("api-key")
def api_key(key_id: str = typer.Argument(..., help="the key's id (logged as key_id)"),
            admin: bool = typer.Option(False, help="may call /admin/reload"),
            scope: Optional[list[str]] = typer.Option(None, "--scope", help="extra scope (repeatable), e.g. mcp: "
                                                                            "may use `llmops mcp` over HTTP"),
            training_use: bool = typer.Option(False, "--training-use",
                                              help="the holder consents to their rated interactions becoming "
                                                   "training data (`llmops flywheel harvest`)")) -> None:
    """Make an API key: prints the key once and the JSON entry (hash only) for LLMOPS_API_KEYS_FILE."""
    import json

    from pipelines.serving.auth import new_key

    secret, entry = new_key(key_id, admin, tuple(scope or ()), training_use)
    typer.echo(f"key (shown once): {secret}")
    typer.echo(json.dumps(entry))


@app.command("retrieve")
def retrieve(
    query: str = typer.Argument(..., help="the question or passage to search for"),
    k: int = typer.Option(5, "--k", "-k", help="number of chunks"),
    source: Optional[list[str]] = typer.Option(None, "--source", "-s", help="only chunks of this source (repeatable)"),
    index_dir: Optional[Path] = typer.Option(None, help="embed output (default: params.yaml embed.output_dir)"),
    as_json: bool = typer.Option(False, "--json", help="print the hits as JSON"),
) -> None:
    """Top-k chunks of the embedded corpus for a query, with scores (the RAG retriever)."""
    from pipelines.config import load_params
    from pipelines.embeddings.retrieval import Retriever

    try:
        directory = index_dir or Path(load_params()["embed"]["output_dir"])
        hits = Retriever(directory).search(query, k, sources=source or None)
    except (ConfigError, KeyError, FileNotFoundError, ValueError) as exc:
        typer.secho(f"retrieve: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    if as_json:
        typer.echo(json.dumps([h.to_dict() for h in hits], indent=2))
        return
    for rank, h in enumerate(hits, 1):
        snippet = " ".join(h.text.split())
        typer.echo(f"{rank}. {h.score:.3f}  {h.source}  {h.chunk_id}\n   {snippet[:200]}")


data_app = typer.Typer(add_completion=False, no_args_is_help=True,
                       help="Dataset and embedding versions (dvc.lock history) and DVC remotes (local, S3).")
app.add_typer(data_app, name="data")


def _data_root(root: Optional[Path]) -> Path:
    from pipelines.config import project_root

    return (root or project_root()).resolve()


def _data_fail(exc: Exception) -> None:
    typer.secho(str(exc), fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@data_app.command("remote")
def data_remote(
    name: str = typer.Option("s3", help="remote name to write into .dvc/config.local"),
    default: bool = typer.Option(False, "--default", help="also make it the default remote (locally)"),
    check: bool = typer.Option(True, help="check endpoint, credentials and bucket afterwards"),
    root: Optional[Path] = typer.Option(None, help="repository root"),
) -> None:
    """Write the S3 remote from LLMOPS_S3_BUCKET / LLMOPS_S3_PREFIX / LLMOPS_S3_ENDPOINT_URL (no credentials)."""
    from pipelines.versioning.remote import RemoteError, S3Settings, check_s3, configure_s3_remote

    repo = _data_root(root)
    try:
        section = configure_s3_remote(repo, S3Settings.from_env(), name)
        if default:
            from dvc.config import Config

            with Config(dvc_dir=str(repo / ".dvc")).edit("local") as conf:
                conf.setdefault("core", {})["remote"] = name
        typer.echo(f"remote '{name}' -> {section['url']}" + (f" at {section['endpointurl']}"
                                                           if "endpointurl" in section else "")
                   + " (written to .dvc/config.local; credentials come from the AWS environment)")
        if check:
            typer.echo(f"reachable: {check_s3(section, name)}")
    except RemoteError as exc:
        _data_fail(exc)


@data_app.command("push")
def data_push(
    targets: Optional[list[str]] = typer.Argument(None, help="outputs to push (default: all)"),
    remote: Optional[str] = typer.Option(None, "--remote", "-r", help="DVC remote (default: core.remote)"),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j"),
    root: Optional[Path] = typer.Option(None, help="repository root"),
) -> None:
    """Check the remote and the cache, then `dvc push`."""
    from pipelines.versioning.remote import RemoteError
    from pipelines.versioning.sync import push

    try:
        report = push(_data_root(root), remote, targets, jobs)
    except RemoteError as exc:
        _data_fail(exc)
    typer.echo(f"{report['pushed']} file(s) pushed to '{report['remote']}' ({report['url']})")


@data_app.command("pull")
def data_pull(
    targets: Optional[list[str]] = typer.Argument(None, help="outputs to pull (default: all)"),
    remote: Optional[str] = typer.Option(None, "--remote", "-r", help="DVC remote (default: core.remote)"),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j"),
    root: Optional[Path] = typer.Option(None, help="repository root"),
) -> None:
    """Check the remote and the cache, then `dvc pull` (fetch + checkout)."""
    from pipelines.versioning.remote import RemoteError
    from pipelines.versioning.sync import pull

    try:
        report = pull(_data_root(root), remote, targets, jobs)
    except RemoteError as exc:
        _data_fail(exc)
    typer.echo(f"pulled from '{report['remote']}' ({report['url']}): "
               + ", ".join(f"{k} {v}" for k, v in report.items() if k not in {"remote", "url"}))


@data_app.command("verify")
def data_verify(
    targets: Optional[list[str]] = typer.Argument(None, help="outputs to check (default: all)"),
    quarantine: bool = typer.Option(False, "--quarantine", help="move corrupted objects to .dvc/tmp/corrupted/"),
    root: Optional[Path] = typer.Option(None, help="repository root"),
) -> None:
    """Hash every local cache object behind the tracked outputs; exit 1 when one is missing or corrupted."""
    from pipelines.versioning import cache

    repo = _data_root(root)
    problems = cache.verify_cache(repo, targets)
    for p in problems:
        typer.echo(p.describe())
    if quarantine:
        for moved in cache.quarantine(repo, problems):
            typer.echo(f"moved aside: {moved}")
    if problems:
        raise typer.Exit(code=1)
    typer.echo("cache ok")


@data_app.command("versions")
def data_versions(
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    all_outs: bool = typer.Option(False, "--all", help="every dvc.lock output, not only data/"),
    max_count: int = typer.Option(50, "--max-count", "-n", help="newest N commits of dvc.lock"),
    root: Optional[Path] = typer.Option(None, help="repository root"),
) -> None:
    """List dataset and embedding versions: git revision, date, DVC hash, files, size, rows."""
    from pipelines.versioning.history import DATA_PREFIXES, VersionError, versions

    try:
        entries = versions(_data_root(root), None if all_outs else DATA_PREFIXES, max_count)
    except VersionError as exc:
        _data_fail(exc)
    if as_json:
        typer.echo(json.dumps(entries, indent=2, default=str))
        return
    if not entries:
        typer.echo("no versions: dvc.lock has never been committed (run `dvc repro`, then commit dvc.lock)")
        return
    header = f"{'revision':<10} {'date':<20} {'output':<34} {'md5':<12} {'files':>6} {'size':>10} {'rows':>8}"
    typer.echo(header)
    typer.echo("-" * len(header))
    for entry in entries:
        typer.echo(f"{entry['short']:<10} {entry['date'][:19]:<20} {entry['subject'][:60]}")
        for out in entry["outs"]:
            typer.echo(f"{'':<10} {'':<20} {out['path'][:34]:<34} {out['md5'][:10]:<12} "
                       f"{out['nfiles'] or '':>6} {out['size'] or '':>10} "
                       f"{'' if out['rows'] is None else out['rows']:>8}")


@data_app.command("diff")
def data_diff(
    rev_a: str = typer.Argument(..., help="older revision (commit, tag, HEAD~1, or 'workspace')"),
    rev_b: str = typer.Argument("workspace", help="newer revision (default: the workspace dvc.lock)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    all_outs: bool = typer.Option(False, "--all", help="every dvc.lock output, not only data/"),
    root: Optional[Path] = typer.Option(None, help="repository root"),
) -> None:
    """What changed between two versions: outputs whose hash moved, rows added/removed per source, embeddings."""
    from pipelines.versioning.history import DATA_PREFIXES, VersionError, diff

    try:
        result = diff(_data_root(root), rev_a, rev_b, None if all_outs else DATA_PREFIXES)
    except VersionError as exc:
        _data_fail(exc)
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
        return
    a, b = result["a"], result["b"]
    typer.echo(f"{a['rev']} ({a['short']}) -> {b['rev']} ({b['short']})")
    for ch in result["changes"]:
        hashes = f"{(ch['md5_a'] or '-')[:10]} -> {(ch['md5_b'] or '-')[:10]}"
        typer.echo(f"{ch['path']:<34} {ch['status']:<9} {hashes if ch['status'] != 'unchanged' else ''}".rstrip())
        if ch["status"] == "unchanged":
            continue
        if ch.get("source_of_counts") == "data":
            label = "embeddings" if ch.get("embeddings") else "rows"
            delta = ch["rows_b"] - ch["rows_a"]
            typer.echo(f"    {label} {ch['rows_a']} -> {ch['rows_b']} ({delta:+d}): +{ch['added']} / -{ch['removed']}")
            for src, d in ch["by_source"].items():
                typer.echo(f"      {src:<28} +{d['added']} / -{d['removed']}  ({d['rows_a']} -> {d['rows_b']})")
        else:
            typer.echo(f"    rows {ch['rows_a'] if ch['rows_a'] is not None else '?'} -> "
                       f"{ch['rows_b'] if ch['rows_b'] is not None else '?'} (metrics)")
            for src, d in (ch.get("by_source_counts") or {}).items():
                typer.echo(f"      {src:<28} {d['rows_a']} -> {d['rows_b']}")
            if ch.get("note"):
                typer.echo(f"    note: {ch['note']}")


ray_app = typer.Typer(add_completion=False, no_args_is_help=True,
                      help="A long-lived local Ray for repeated runs, with a warm worker pool for Ray Train.")
app.add_typer(ray_app, name="ray")


def _finetune_workers(params: Optional[Path]) -> tuple[int, int]:
    """(finetune.num_workers, engines.ray.warm_pool_keep_alive_s) from params.yaml."""
    from pipelines.config import load_params, parse_section
    from pipelines.engines.config import engines_from_params
    from pipelines.stages.finetune import SECTION, Config

    all_params = load_params(params)
    finetune = parse_section(all_params, SECTION, Config)
    return finetune.num_workers, engines_from_params(all_params).ray.warm_pool_keep_alive_s


def _ray_bin() -> str:
    """The `ray` command of this environment (the CLI may run without the venv on PATH)."""
    import shutil

    return shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"


@ray_app.command("up")
def ray_up(
    num_cpus: Optional[int] = typer.Option(None, help="CPUs the head offers (default: all)"),
    warm_pool: bool = typer.Option(True, "--warm-pool/--no-warm-pool", help="preload Train's imports and prestart workers"),
    params: Optional[Path] = typer.Option(None, "--params", "-p"),
) -> None:
    """`ray start --head` for stages to join (LLMOPS_RAY_ADDRESS=auto), with Ray Train's warm worker pool."""
    import os
    import subprocess

    from pipelines.engines import ray_warm_pool
    from pipelines.engines.ray_engine import RAY_CORE_ENV_DEFAULTS

    env = {**os.environ, **RAY_CORE_ENV_DEFAULTS}
    if warm_pool:
        env.update(ray_warm_pool.preload_env())
    cmd = [_ray_bin(), "start", "--head", f"--num-cpus={num_cpus or os.cpu_count()}", "--include-dashboard=false",
           "--disable-usage-stats"]
    if subprocess.run(cmd, env=env).returncode != 0:
        raise typer.Exit(code=2)
    if warm_pool:
        ray_warm(workers=None, params=params)


@ray_app.command("warm")
def ray_warm(
    workers: Optional[int] = typer.Option(None, help="Train workers per run (default: finetune.num_workers)"),
    params: Optional[Path] = typer.Option(None, "--params", "-p"),
) -> None:
    """Prestart idle, pre-imported processes for the next finetune run on the running Ray head."""
    from pipelines.config import load_params
    from pipelines.engines import ray_warm_pool
    from pipelines.engines.config import engines_from_params
    from pipelines.engines.ray_engine import init_ray, ray_train_env_defaults, start_autoscaling_coordinator

    num_workers, keep_alive = _finetune_workers(params)
    ray_train_env_defaults()  # the runtime env the stage's Train run will have
    ray_cfg = engines_from_params(load_params(params)).ray
    init_ray(ray_cfg.model_copy(update={"address": "auto"}))  # the head `llmops ray up` started
    # Ray Data's detached autoscaling coordinator, which Train's controller asks for resources: created now, it does
    # not take a process from the pool on the first run.
    start_autoscaling_coordinator()
    started = ray_warm_pool.prestart_for_train_run(workers or num_workers, keep_alive)
    if not started:
        typer.secho("no workers prestarted (see the warning above); runs start their workers on demand", err=True)
        raise typer.Exit(code=2)
    typer.echo(f"prestarted {started} Ray worker processes for Ray Train (kept {keep_alive} s); "
               f"they import {', '.join(ray_warm_pool.TRAIN_PRELOAD_MODULES)} in the background")


@ray_app.command("down")
def ray_down() -> None:
    """`ray stop`."""
    import subprocess

    raise typer.Exit(code=subprocess.run([_ray_bin(), "stop"]).returncode)


airflow_app = typer.Typer(add_completion=False, no_args_is_help=True,
                          help="Airflow on this machine: scheduler, dag-processor, triggerer and API server.")
app.add_typer(airflow_app, name="airflow")


def _airflow_config(params: Optional[Path]):
    from pipelines.config import load_params, parse_section
    from pipelines.orchestration.airflow_services import AirflowConfig

    return parse_section(load_params(params), "airflow", AirflowConfig)


@airflow_app.command("up")
def airflow_up(params: Optional[Path] = typer.Option(None, "--params", "-p")) -> None:
    """Migrate the metadata DB and start the four services (loopback, parallelism fitted to the CPUs)."""
    from pipelines.orchestration import airflow_services

    try:
        started = airflow_services.up(_airflow_config(params), echo=typer.echo)
    except (RuntimeError, TimeoutError) as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    for service in started:
        typer.echo(f"  {service['name']:<14} pid {service['pid']:<8} log {service['log']}")


@airflow_app.command("down")
def airflow_down(params: Optional[Path] = typer.Option(None, "--params", "-p")) -> None:
    """Stop every service (SIGTERM to its process group, SIGKILL after airflow.stop_timeout_s), leaving no orphan."""
    from pipelines.orchestration import airflow_services

    report = airflow_services.down(_airflow_config(params))
    for name, seconds in report["stopped"].items():
        killed = " (SIGKILL)" if name in report["killed"] else ""
        typer.echo(f"  {name:<14} stopped in {seconds:.1f} s{killed}")
    typer.echo(f"Airflow down; stray processes killed: {report['orphans_killed']}")


@airflow_app.command("status")
def airflow_status(params: Optional[Path] = typer.Option(None, "--params", "-p")) -> None:
    from pipelines.orchestration import airflow_services

    for name, alive in airflow_services.status(_airflow_config(params)).items():
        typer.echo(f"  {name:<14} {'running' if alive else 'stopped'}")


@airflow_app.command("env")
def airflow_env(params: Optional[Path] = typer.Option(None, "--params", "-p")) -> None:
    """`export` lines for running the `airflow` CLI against the same home and settings (eval "$(llmops airflow env)")."""
    import shlex

    from pipelines.orchestration import airflow_services

    for key, value in airflow_services.airflow_env(_airflow_config(params)).items():
        typer.echo(f"export {key}={shlex.quote(value)}")


demo_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Watch the platform at work (after make demo).")
app.add_typer(demo_app, name="demo")


@demo_app.command("loop")
def demo_loop(
    interactive: bool = typer.Option(False, "--interactive", help="approve in Airflow's Required actions page "
                                                                     "yourself (the URL is printed)"),
    keep: bool = typer.Option(False, "--keep", help="leave Airflow and the server running at the end"),
    step_timeout: float = typer.Option(1800.0, help="seconds any one step (or one retrain stage) may take"),
) -> None:
    """Drift -> retrain -> gate -> promotion -> the server on the new version, on real Airflow, step by step."""
    from pipelines.orchestration.demo_loop import LoopOptions, run_loop

    outcome = run_loop(LoopOptions(interactive=interactive, keep=keep, step_timeout_s=step_timeout),
                       echo=typer.echo)
    if not outcome["ok"]:
        raise typer.Exit(code=2 if outcome.get("error") else 1)


rollout_app = typer.Typer(add_completion=False, no_args_is_help=True,
                          help="Canary / shadow rollouts (pipelines/rollout/): status, one analysis, by-hand moves.")
app.add_typer(rollout_app, name="rollout")


def _rollout_cfgs(params: Optional[Path]):
    from pipelines.config import load_params, parse_section
    from pipelines.models.registry import RegistryConfig
    from pipelines.rollout.config import RolloutConfig

    loaded = load_params(params)
    return parse_section(loaded, "rollout", RolloutConfig), parse_section(loaded, "registry", RegistryConfig)


def _rollout_fail(what: str, exc: Exception):
    typer.secho(f"rollout {what}: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _echo_state(state: Optional[dict]) -> None:
    if not state:
        typer.echo("no rollout (serving: champion only)")
        return
    steps = " -> ".join(f"{s['share']:.0%}" for s in state["steps"])
    typer.echo(f"rollout {state['rollout_id']}: {state['strategy']} {state['status']}, v{state['challenger_version']} "
               f"vs champion v{state['champion_version']}, step {state['step_index'] + 1}/{len(state['steps'])} "
               f"({steps}), since {state['step_started_at']}, chosen by {state['chosen_by']}")


def _echo_decision(report: Optional[dict]) -> None:
    if not report:
        return
    typer.echo(f"decision: {report['decision']} ({report.get('at')})" +
               (" -- needs approval" if report.get("approval_required") else ""))
    for reason in report.get("reasons") or []:
        typer.echo(f"  - {reason}")
    for metric, m in (report.get("metrics") or {}).items():
        for role, r in m["roles"].items():
            ch, cb = m.get("challenger") or {}, m.get("champion") or {}
            typer.echo(f"  {metric:<24} {role:<9} champion {cb.get('value')} (n {cb.get('n')})  challenger "
                       f"{ch.get('value')} (n {ch.get('n')})  diff [{r['diff_lo']}, {r['diff_hi']}]  margin "
                       f"{r['margin']}  {r['status']}")


@rollout_app.command("status")
def rollout_status(params: Optional[Path] = typer.Option(None, "--params", "-p"),
                   as_json: bool = typer.Option(False, "--json", help="the state and latest decision as JSON")) -> None:
    """The running (or last) rollout: strategy, step, share, and the latest decision with its per-arm table."""
    import json

    from pipelines.rollout import lifecycle

    try:
        cfg, _ = _rollout_cfgs(params)
        out = lifecycle.status(cfg)
    except (ConfigError, ValueError) as exc:
        _rollout_fail("status", exc)
    if as_json:
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    _echo_state(out["state"])
    _echo_decision(out["latest_decision"])


@rollout_app.command("analyze")
def rollout_analyze(params: Optional[Path] = typer.Option(None, "--params", "-p"),
                    apply: bool = typer.Option(False, "--apply", help="apply the decision (as the DAG does); a "
                                               "decision that needs approval is applied only with --approve"),
                    approve: bool = typer.Option(False, "--approve", help="approve a move to 100% / completion"),
                    by: str = typer.Option("cli", help="recorded as who acted")) -> None:
    """One look: per-arm metrics and the decision (recorded under rollout.decisions_dir); --apply acts on it."""
    from pipelines.rollout import analysis, lifecycle

    try:
        from pipelines.config import load_params, parse_section
        from pipelines.monitoring.online_eval import OnlineEvalConfig

        cfg, registry = _rollout_cfgs(params)
        report = analysis.run(cfg, online_eval=parse_section(load_params(params), "online_eval", OnlineEvalConfig))
        _echo_decision(report)
        if apply:
            applied = lifecycle.apply(cfg, registry, report, by=by, approved=True if approve else None)
            typer.echo(f"applied: {applied['action']}")
            _echo_state(applied.get("state"))
    except (ConfigError, ValueError) as exc:
        _rollout_fail("analyze", exc)


@rollout_app.command("advance")
def rollout_advance(params: Optional[Path] = typer.Option(None, "--params", "-p"),
                    reason: str = typer.Option("advanced by hand", help="recorded in the rollout's history"),
                    by: str = typer.Option("cli", help="recorded as who acted")) -> None:
    """By hand, without statistics: the next step, or complete (champion moves) on the last step."""
    from pipelines.rollout import lifecycle

    try:
        cfg, registry = _rollout_cfgs(params)
        out = lifecycle.advance(cfg, registry, by=by, reason=reason)
    except (ConfigError, ValueError) as exc:
        _rollout_fail("advance", exc)
    typer.echo(f"{out['action']}" + (f": champion -> v{out['champion_moved']['version']}"
                                     if out.get("champion_moved") else ""))
    _echo_state(out["state"])


@rollout_app.command("abort")
def rollout_abort(params: Optional[Path] = typer.Option(None, "--params", "-p"),
                  reason: str = typer.Option(..., help="why (recorded in the rollout's history)"),
                  by: str = typer.Option("cli", help="recorded as who acted")) -> None:
    """Stop the rollout: everyone back on the champion, alias `challenger` removed, champion untouched."""
    from pipelines.rollout import lifecycle

    try:
        cfg, registry = _rollout_cfgs(params)
        out = lifecycle.abort(cfg, registry, by=by, reason=reason)
    except (ConfigError, ValueError) as exc:
        _rollout_fail("abort", exc)
    _echo_state(out["state"])


@rollout_app.command("start")
def rollout_start(version: int = typer.Argument(..., help="registered version to roll out (alias challenger)"),
                  strategy: str = typer.Option("canary", help="canary | shadow"),
                  params: Optional[Path] = typer.Option(None, "--params", "-p"),
                  by: str = typer.Option("cli", help="recorded as who chose the strategy")) -> None:
    """Start a canary or shadow rollout of a registered version against the current champion, by hand."""
    from pipelines.models.registry import find_champion
    from pipelines.rollout import lifecycle

    try:
        cfg, registry = _rollout_cfgs(params)
        champion = find_champion(registry).info
        if champion is None:
            raise ValueError("no champion to compare with: promote the first version directly")
        state = lifecycle.start(cfg, registry, strategy=strategy, challenger_version=version,
                                champion_version=champion["version"], chosen_by=by)
    except (ConfigError, ValueError) as exc:
        _rollout_fail("start", exc)
    except Exception as exc:  # an unknown version: MlflowException
        _rollout_fail("start", exc)
    _echo_state(state.to_dict())


@app.command("maturity")
def maturity(
    root: Optional[Path] = typer.Option(None, help="repository root"),
    html: Optional[Path] = typer.Option(None, "--html", help="also write the HTML scorecard here"),
    as_json: Optional[Path] = typer.Option(None, "--json", help="also write the scorecard as JSON here"),
) -> None:
    """LLMOps maturity (Level 1/2 criteria, the seed's 10 challenges) scored from evidence in the repo and deployment."""
    from pipelines.config import project_root
    from pipelines.io import write_json
    from pipelines.maturity.scorecard import scorecard, table, write_html

    card = scorecard((root or project_root()).resolve())
    typer.echo(table(card))
    if html:
        typer.echo(f"HTML: {write_html(card, html)}")
    if as_json:
        write_json(as_json, card)


@app.command("cost")
def cost(
    rev: Optional[list[str]] = typer.Option(None, "--rev", "-r",
                                            help="git revision (repeatable; 'workspace' for the files on disk); "
                                                 "default: the workspace"),
    request_log: Optional[Path] = typer.Option(None, help="serving request log to summarise (default: params.yaml "
                                                          "serve.request_log, when it exists)"),
    as_json: bool = typer.Option(False, "--json", help="print the figures as JSON"),
    root: Optional[Path] = typer.Option(None, help="repository root"),
) -> None:
    """Per-stage wall, CPU, peak memory, GPU and cost (metrics/*.json `resources`) by revision, side by side."""
    from pipelines.config import load_params, project_root
    from pipelines.cost.summary import WORKSPACE, CostError, summarise, table
    from pipelines.serving.request_log import usage_summary
    from pipelines.stages.registry import STAGES, stage_module

    repo = (root or project_root()).resolve()
    serving = None
    try:
        params = load_params(repo / "params.yaml")
        log_path = request_log or (Path(params["serve"]["request_log"]) if isinstance(params.get("serve"), dict)
                                   and params["serve"].get("request_log") else None)
        if log_path is not None:
            log_path = log_path if log_path.is_absolute() else repo / log_path
            serving = usage_summary(log_path, float(params["cost"]["price_per_cpu_hour"]))
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        typer.secho(f"cost: params.yaml: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    try:
        summary = summarise(repo, rev or [WORKSPACE], {name: stage_module(name).SECTION for name in STAGES}, serving)
    except CostError as exc:
        typer.secho(f"cost: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(table(summary))


@app.command("infra-validate")
def infra_validate(root: Optional[Path] = typer.Option(None, help="repository root")) -> None:
    """Check infra/ (Compose, Kubernetes manifests, Helm values) offline: schemas, policies, params consistency."""
    from pipelines.config import project_root
    from pipelines.infra.validate import validate_all

    report = validate_all((root or project_root()).resolve())
    for problem in report.problems:
        typer.secho(f"{problem.severity}: {problem}", fg=typer.colors.RED if problem.severity == "error" else None,
                    err=True)
    typer.echo(f"{len(report.files)} files checked: {len(report.errors)} errors, {len(report.warnings)} warnings")
    if report.errors:
        raise typer.Exit(code=1)


@app.command("dvc-deps")
def dvc_deps(
    write: bool = typer.Option(False, "--write", help="rewrite the code deps (and missing params) in dvc.yaml"),
    check: bool = typer.Option(False, "--check", help="exit 1 when dvc.yaml's deps differ from the imports"),
    root: Optional[Path] = typer.Option(None, help="repository root"),
) -> None:
    """Each stage's DVC code deps, computed from what its module imports (pipelines/orchestration/code_deps.py)."""
    from pipelines.config import project_root
    from pipelines.orchestration import code_deps
    from pipelines.stages.registry import SHARED_SECTIONS, STAGES, shared_sections_of, stage_module

    root = (root or project_root()).resolve()
    expected = code_deps.stage_code_deps(STAGES, root)
    params = {}
    for name in STAGES:
        module = stage_module(name)
        params[name] = [module.SECTION, *(SHARED_SECTIONS[key][0] for key in shared_sections_of(module))]
    dvc_yaml = root / "dvc.yaml"
    if write:
        changed = code_deps.write(dvc_yaml, expected, params)
        typer.echo(f"dvc.yaml: deps rewritten for {', '.join(changed)}" if changed else "dvc.yaml: deps up to date")
        return
    drifts = code_deps.check(dvc_yaml, expected, params)
    if check:
        for drift in drifts:
            typer.secho(str(drift), fg=typer.colors.RED, err=True)
        if drifts:
            typer.secho("run `llmops dvc-deps --write` to fix dvc.yaml", err=True)
            raise typer.Exit(code=1)
        typer.echo(f"dvc.yaml: code deps of {len(expected)} stages match their imports")
        return
    for stage, files in expected.items():
        typer.echo(f"{stage}: " + " ".join(files))


@app.command("mcp")
def mcp(
    transport: Optional[str] = typer.Option(None, help="stdio or http (default: params.yaml mcp.transport)"),
    host: Optional[str] = typer.Option(None, help="http: bind address (default: mcp.host)"),
    port: Optional[int] = typer.Option(None, help="http: port, 0 for a free one (default: mcp.port)"),
    root: Optional[Path] = typer.Option(None, help="repository root (default: LLMOPS_ROOT or the current one)"),
) -> None:
    """The platform as an MCP server (registry, gates, lineage, drift, the served model) over stdio or HTTP."""
    import os

    from pipelines.config import project_root
    from pipelines.mcp_server.server import load_config, serve as serve_mcp
    from pipelines.platform_api import PlatformError, Workspace

    try:
        ws = Workspace.load((root or project_root()).resolve())
        os.environ["LLMOPS_ROOT"] = str(ws.root)  # code that asks project_root() sees the same workspace
        cfg = load_config(ws)
        chosen = transport or cfg.transport
        if chosen not in ("stdio", "http"):
            raise PlatformError(f"--transport must be stdio or http (got {chosen!r})")
        serve_mcp(ws, cfg, chosen, host, port)
    except (ConfigError, PlatformError, OSError) as exc:
        typer.secho(f"mcp: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)


flywheel_app = typer.Typer(add_completion=False, no_args_is_help=True,
                           help="The data flywheel: rated production answers become training data (docs/flywheel.md).")
app.add_typer(flywheel_app, name="flywheel")


@flywheel_app.command("harvest")
def flywheel_harvest(
    until: Optional[str] = typer.Option(None, help="ISO-8601 end of the window (default: now); the window is "
                                                   "flywheel.window_hours long"),
    window_hours: Optional[float] = typer.Option(None, help="override flywheel.window_hours"),
    dry_run: bool = typer.Option(False, "--dry-run", help="report only: write nothing into the inbox"),
) -> None:
    """Rated interactions of consenting keys -> a landing batch (SFT records, preference pairs) + its report."""
    import json
    from datetime import datetime

    from pipelines.flywheel.harvest import run as harvest_run

    try:
        end = datetime.fromisoformat(until.replace("Z", "+00:00")) if until else None
        if end is not None and end.tzinfo is None:
            raise ValueError(f"--until {until!r} needs a time zone (e.g. Z)")
        rep = harvest_run(until=end, write=not dry_run,
                          **({"window_hours": window_hours} if window_hours is not None else {}))
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        typer.secho(f"flywheel harvest: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    typer.echo(json.dumps({k: rep[k] for k in ("lines", "harvested", "excluded", "balanced", "records", "written",
                                                "reason", "sources", "injection_detector")}, indent=2))


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":
    sys.exit(app())
