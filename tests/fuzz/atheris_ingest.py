"""Coverage-guided fuzzing of the ingest checks with atheris (outside CI; ``pip install atheris``).

The entry point is what every channel runs before anything is written: the Part-10 split, the
structural walk, pydicom's header read, the regional rules and the InstanceReceived event
(:func:`ingest.pipeline.examine_file` / :func:`~ingest.pipeline.examine_dataset`). Any
exception other than :class:`ingest.pipeline.Refused` is a finding: on the wire it would be an
"internal error" instead of a clear refusal.

    python tests/fuzz/atheris_ingest.py CORPUS_DIR -max_total_time=3600 -rss_limit_mb=2048 \\
        -max_len=262144 -timeout=20

An empty or missing corpus directory is seeded from the files shipped with pydicom (``--seed-only``
writes the seeds and stops). The first input byte chooses the path: even -> a Part-10 file, odd
-> a bare data set in one of the transfer syntaxes a C-STORE can negotiate. A file argument
instead of a directory replays that one input (a crash or timeout artifact).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["ingest", "schemas", "pydicom"]):
    from ingest.dicom import part10  # noqa: F401  (instrumented with the rest of the package)
    from ingest.pipeline import Arrival, Refused, examine_dataset, examine_file

ARRIVAL = Arrival(channel="dicom", source_node="FUZZ", calling_ae_title="FUZZ", called_ae_title="CAMI")
DATASET_SYNTAXES = (
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.5",
)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0], data[1:]
    try:
        if mode % 2 == 0:
            examine_file(body, ARRIVAL, max_inflated=MAX_INFLATED)
        else:
            examine_dataset(
                body, DATASET_SYNTAXES[(mode >> 1) % len(DATASET_SYNTAXES)], ARRIVAL, max_inflated=MAX_INFLATED
            )
    except Refused:
        pass


def seed(corpus: Path, max_len: int = 262144) -> int:
    """Seed the corpus with pydicom's own test files (as files, and as bare data sets)."""
    import pydicom.data

    from ingest.dicom import MalformedObject, split_part10

    corpus.mkdir(parents=True, exist_ok=True)
    root = Path(pydicom.data.__file__).parent
    count = 0
    for path in sorted(p for sub in ("test_files", "charset_files") for p in (root / sub).rglob("*") if p.is_file()):
        data = path.read_bytes()
        if len(data) + 1 > max_len:
            continue
        (corpus / f"file-{path.name}").write_bytes(b"\x00" + data)
        count += 1
        try:
            received = split_part10(data)
        except MalformedObject:
            continue
        if received.transfer_syntax in DATASET_SYNTAXES:
            mode = 2 * DATASET_SYNTAXES.index(received.transfer_syntax) + 1
            (corpus / f"dataset-{path.name}").write_bytes(bytes([mode]) + data[received.dataset_offset :])
            count += 1
    return count


#: a deflate bomb stops here rather than at the archive's 256 MiB default (the fuzzer runs in bounded memory)
MAX_INFLATED = 64 * 1024 * 1024


def main() -> None:
    args = sys.argv[1:]
    corpus = next((Path(a) for a in args if not a.startswith("-")), None)
    if corpus is not None and (not corpus.exists() or (corpus.is_dir() and not any(corpus.iterdir()))):
        print(f"seeded {seed(corpus)} inputs into {corpus}", file=sys.stderr)
    if "--seed-only" in args:
        return
    warnings.simplefilter("ignore")  # pydicom warns about every mangled character set name
    atheris.Setup([sys.argv[0], *[a for a in args if a != "--seed-only"]], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
