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
    from pipelines.stages.errors import StageFailed

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
    host: Optional[str] = typer.Option(None, help="bind address (default from params: 127.0.0.1)"),
    port: Optional[int] = typer.Option(None),
) -> None:
    """Serve the current champion over an OpenAI-style HTTP API."""
    import uvicorn

    from pipelines.config import load_section
    from pipelines.serving.api import ServeConfig, create_app

    try:
        cfg = load_section("serve", ServeConfig, params)
    except ConfigError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    uvicorn.run(create_app(cfg), host=host or cfg.host, port=port or cfg.port, log_level="info")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":
    sys.exit(app())
