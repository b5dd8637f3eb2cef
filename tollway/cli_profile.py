"""``tollway profile …``: list the CPU profiles a server captured and render one for reading.

Registered on the main command group by ``tollway.cli``. Captures happen inside the server (the
``ENABLE_PPROF`` monitor or ``POST /api/debug/profile``); see ``tollway.ops.profiler``.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import click

from tollway.errors import ConfigError
from tollway.ops.profiler import EXTENSIONS, FORMATS, Format, ProfileFileError, list_profiles, render_file
from tollway.settings import load_settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def profile() -> None:
    """CPU profiles captured by the server (ENABLE_PPROF or POST /api/debug/profile)."""


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"tollway: {message}", err=True)
    sys.exit(code)


def _default_output(source: Path, fmt: Format) -> Path:
    name = source.name.split(".", 1)[0] + EXTENSIONS[fmt]
    return source.with_name(name)


@profile.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "-f",
    "fmt",
    type=click.Choice(FORMATS),
    default="html",
    show_default=True,
    help="html: call tree and timeline for a browser; speedscope: a flame graph at speedscope.app; "
    "text: the call tree.",
)
@click.option(
    "--output",
    "-o",
    help="Where to write it; '-' for standard output. "
    "Default: text to standard output, the others beside FILE (.html, .speedscope.json).",
)
def render(file: Path, fmt: Format, output: str | None) -> None:
    """Render a captured profile FILE (cpu-….pyisession.gz) for reading."""
    try:
        text = render_file(file, fmt)
    except ProfileFileError as exc:
        _fail(str(exc), 1)
    if output == "-" or (output is None and fmt == "text"):
        click.echo(text, nl=not text.endswith("\n"))
        return
    target = Path(output) if output else _default_output(file, fmt)
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot write {target}: {exc}", 1)
    click.echo(f"wrote {target}")


@profile.command(name="list")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="The profile directory (default: PPROF_DIR, ./pprof).",
)
def list_command(directory: Path | None) -> None:
    """List the captured profiles, newest first."""
    if directory is None:
        try:
            directory = Path(load_settings().pprof_dir)
        except ConfigError as exc:
            _fail(str(exc), 2)
    files = list_profiles(directory)
    if not files:
        click.echo(f"no profiles in {directory}")
        return
    for item in files:
        when = datetime.fromtimestamp(item.modified, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        click.echo(f"{item.name}  {item.size:>10,} bytes  {when}")
    click.echo(f"{len(files)} profile(s) in {directory}")
