"""``cami import PATH...``: bulk import of folders, zip files and DICOMDIR media.

The work is done by :mod:`ingest.importer`; this module parses the command line, draws the
progress bar (stderr) and prints the summary (stdout; ``--json`` for scripts).

Exit codes: 0 every file has a final outcome (stored, duplicate, refused by the regional rules,
or skipped as non-DICOM); 1 something could not be imported and a re-run may fix it (unreadable
file or folder, damaged zip or DICOMDIR, a file the DICOMDIR lists but the media lacks, the
archive's storage or event log unavailable, another import of the same paths running);
2 usage error (bad option, missing PATH); 130 interrupted (Ctrl-C; re-run to resume).
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn
from rich.table import Table
from rich.text import Text

from api.cli.output import count
from api.config import Settings
from ingest.importer import (
    Candidate,
    FileResult,
    Importer,
    ImportFailed,
    ImportOptions,
    Journal,
    Summary,
    journal_path,
    new_summary,
    prepare,
)
from schemas.events import Actor

#: how many errors the human summary lists (all of them are in --json)
SHOWN_ERRORS = 20


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "import",
        help="import DICOM files from folders, zip files and DICOMDIR media (resumable)",
        description=(
            "Import every DICOM Part-10 file under PATH (folders recursively, .zip files read in place, "
            "DICOMDIR media) through the archive's write path. Non-DICOM files are skipped and counted. "
            "Re-running the same command after an interruption skips what is already done."
        ),
        epilog=(
            "Exit codes: 0 every file has an outcome (stored, duplicate, refused by the regional rules, skipped); "
            "1 some files could not be read or stored (re-run to retry them); 2 usage error; 130 interrupted."
        ),
    )
    p.add_argument("paths", nargs="+", metavar="PATH", type=Path, help="folder, .zip file, DICOM file or media")
    p.add_argument(
        "--organisation",
        required=True,
        metavar="CODE",
        help="regional code of the organisation the studies come from (recorded in every event)",
    )
    p.add_argument("--emergency", action="store_true", help="mark the imported studies as emergency")
    p.add_argument("--pathology", action="store_true", help="mark the imported studies as having detected pathology")
    p.add_argument(
        "--full-import",
        action="store_true",
        help="this is a full import of a local archive, not the normal pathology-only flow (recorded in the summary)",
    )
    p.add_argument("--workers", type=count(1, 64), default=2, metavar="N", help="parallel threads (default 2)")
    p.add_argument("--restart", action="store_true", help="forget the journal of earlier runs and look at every file")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="draw the progress bar even off a terminal",
    )
    shown.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=cmd_import)


def _valid_organisation(code: str) -> bool:
    return 0 < len(code) <= 64 and code.isprintable() and code.strip() == code and "\\" not in code


def cmd_import(args: argparse.Namespace) -> int:
    from api.bootstrap import bootstrap

    console = Console(stderr=True, force_terminal=True if args.progress else None)
    out = Console()
    if not _valid_organisation(args.organisation):
        console.print("cami import: --organisation must be 1-64 printable characters (a regional code)")
        return 2
    paths: list[Path] = args.paths
    missing = [str(p) for p in paths if not p.exists() and not p.is_symlink()]
    if missing:
        console.print(f"cami import: no such file or folder: {', '.join(missing)}")
        return 2
    show_progress = console.is_terminal if args.progress is None else bool(args.progress)
    options = ImportOptions(
        organisation=args.organisation,
        pathology=args.pathology,
        emergency=args.emergency,
        full_import=args.full_import,
        workers=args.workers,
        restart=args.restart,
    )
    settings = Settings.from_env()
    journal = Journal(journal_path(settings.home, paths))
    try:
        journal.lock()
    except ImportFailed as exc:
        journal.close()
        console.print(f"[red]cami import: {exc}[/red]")
        return 1
    archive = bootstrap(settings)
    try:
        with console.status("scanning…", spinner="dots") if show_progress else _Nothing() as status:
            candidates, problems = prepare(
                paths,
                (lambda n: status.update(f"scanning… {n} files found")) if show_progress else None,
                limits=settings.import_limits,
            )
        importer = Importer(
            archive.ingestor,
            journal,
            options,
            actor=Actor(_os_user(), "administrator"),
            source_node=f"import:{socket.gethostname() or 'localhost'}",
            limits=settings.import_limits,
        )
        summary = new_summary(importer.run_id, paths, options, candidates, problems, journal)
        todo = importer.plan(candidates)
        resumed = len(candidates) - len(todo)
        if resumed:
            console.print(f"resumed: {resumed} of {len(candidates)} already imported (journal {journal.path})")
        if show_progress:
            summary = _run_with_progress(importer, candidates, todo, summary, console)
        else:
            summary = importer.run(candidates, summary, todo=todo)
    finally:
        archive.close()
        journal.close()
    if args.json:
        sys.stdout.write(json.dumps(summary.to_dict(), ensure_ascii=False, indent=2) + "\n")
    else:
        _render(summary, out)
    if summary.errors and not args.json:
        for error in summary.errors[:SHOWN_ERRORS]:
            console.print(f"error: {error['path']}: {error['error']}", markup=False, highlight=False)
        if len(summary.errors) > SHOWN_ERRORS:
            console.print(f"… and {len(summary.errors) - SHOWN_ERRORS} more (--json lists all)")
    if summary.interrupted:
        console.print("interrupted: run the same command again to resume")
        return 130
    if summary.aborted:
        console.print(f"[red]stopped: {summary.aborted}[/red]")
    return summary.exit_code


class _Nothing:
    def __enter__(self) -> Any:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


# -- progress ----------------------------------------------------------------------------------
class _BytesColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        done, total = task.fields["bytes_done"], task.fields["bytes_total"]
        return Text(f"{done / 1e6:,.1f}/{total / 1e6:,.1f} MB", style="progress.download")


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        elapsed = max(time.monotonic() - task.fields["started"], 1e-6)
        files = task.fields["run_files"] / elapsed
        mb = task.fields["run_bytes"] / 1e6 / elapsed
        return Text(f"{files:,.1f} files/s {mb:,.2f} MB/s", style="progress.data.speed")


class _EtaColumn(ProgressColumn):
    """Time left from this run's byte rate (files vary in size; bytes predict better)."""

    def render(self, task: Task) -> Text:
        elapsed = time.monotonic() - task.fields["started"]
        run_bytes = task.fields["run_bytes"]
        left = task.fields["bytes_total"] - task.fields["bytes_done"]
        if task.finished:
            return Text("done", style="progress.elapsed")
        if run_bytes <= 0 or elapsed <= 0:
            return Text("ETA -:--:--", style="progress.remaining")
        seconds = int(left / (run_bytes / elapsed))
        return Text(f"ETA {seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}", style="progress.remaining")


def _run_with_progress(
    importer: Importer, candidates: list[Candidate], todo: list[Candidate], summary: Summary, console: Console
) -> Summary:
    pending_keys = {c.key for c in todo}
    done_bytes = sum(c.size for c in candidates if c.key not in pending_keys)
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("files"),
        _BytesColumn(),
        _RateColumn(),
        _EtaColumn(),
        console=console,
        transient=False,
    )
    with progress:
        task = progress.add_task(
            "import",
            total=len(candidates),
            completed=len(candidates) - len(todo),
            bytes_done=done_bytes,
            bytes_total=summary.total_bytes,
            run_files=0,
            run_bytes=0,
            started=time.monotonic(),
        )

        def advance(candidate: Candidate, result: FileResult) -> None:
            fields = progress.tasks[task].fields
            progress.update(
                task,
                advance=1,
                bytes_done=fields["bytes_done"] + candidate.size,
                run_files=fields["run_files"] + 1,
                run_bytes=fields["run_bytes"] + candidate.size,
            )

        return importer.run(candidates, summary, advance, todo=todo)


# -- summary -----------------------------------------------------------------------------------
def _render(summary: Summary, out: Console) -> None:
    data = summary.to_dict()
    run = data["this_run"]
    table = Table(title=f"cami import ({'full import' if data['full_import'] else 'pathology flow'})")
    table.add_column("")
    table.add_column("files", justify="right")
    table.add_column("detail")
    table.add_row("seen", str(data["files_seen"]), f"{data['bytes_seen'] / 1e6:,.1f} MB")
    if data["resumed"]:
        table.add_row("done in earlier runs", str(data["resumed"]), "skipped now (journal)")
    table.add_row("stored (new)", str(data["stored"]), "")
    table.add_row("already held", str(data["duplicates"]), "identical bytes, no new event")
    table.add_row("refused", str(data["refused"]), _reasons(data["refused_by_reason"]))
    table.add_row("skipped", str(data["skipped"]), _reasons(data["skipped_by_reason"]))
    table.add_row("errors", str(data["errors"]), "re-run to retry" if data["errors"] else "")
    table.add_row(
        "this run",
        str(run["files"]),
        f"{run['bytes'] / 1e6:,.1f} MB in {run['seconds']:.1f} s: "
        f"{run['files_per_second']:,.1f} files/s, {run['mb_per_second']:,.2f} MB/s",
    )
    out.print(table)
    out.print(f"organisation {data['organisation']}, run {data['run_id']}", highlight=False)


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in counts.items())
