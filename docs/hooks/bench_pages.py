"""One docs page per benchmark result note (bench/results/*.md), generated at every build (a mkdocs hook): the
pages are the files the benchmarks write, never copies that could fall behind them. A note the nav's Benchmarks
section does not list yet is appended to it (titled by its first heading), so a new benchmark needs no nav edit."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def bench_pages() -> dict[str, str]:
    """docs path -> content, one per bench/results/*.md."""
    pages = {}
    for path in sorted((ROOT / "bench" / "results").glob("*.md")):
        text = path.read_text(encoding="utf-8")
        note = (f"\n\n*Written by the benchmark: `bench/results/{path.name}` (raw figures, where there are any, in "
                f"`bench/results/{path.stem}.json`).*\n")
        pages[f"benchmarks/{path.stem}.md"] = text.rstrip() + note
    return pages


def _title(text: str, stem: str) -> str:
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return stem


def on_config(config):  # noqa: ANN001 (mkdocs hook signature)
    section = next((item["Benchmarks"] for item in config.nav or []
                    if isinstance(item, dict) and isinstance(item.get("Benchmarks"), list)), None)
    if section is None:
        return config
    listed = {next(iter(i.values())) if isinstance(i, dict) else i for i in section}
    for src, content in bench_pages().items():
        if src not in listed:
            section.append({_title(content, src): src})
    return config


def on_files(files, config):  # noqa: ANN001 (mkdocs hook signature)
    from mkdocs.structure.files import File

    for src, content in bench_pages().items():
        files.append(File.generated(config, src, content=content))
    return files
