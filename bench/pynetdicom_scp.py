"""The floor under CAMI's Storage SCP: a bare pynetdicom Storage SCP with CAMI's network settings.

    python bench/pynetdicom_scp.py PORT {null,write} DIRECTORY

Run by ``bench/ingest.py --floors``. It accepts every storage SOP class in every transfer syntax
with the settings ``cami serve`` uses (the same maximum PDU size, TCP_NODELAY, the poll() and
wait-for-work patches of ``ingest/netio.py``), and answers each C-STORE:

* ``null``: Success at once, nothing kept -- what pynetdicom alone costs per object;
* ``write``: after writing the data set to a file named by its SHA-256 and fsyncing it -- the
  least a durable archive does (CAMI also renames, fsyncs the directory and commits an event).
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt  # noqa: E402

from ingest.scp import MAX_PDU, _NoDelayServer  # noqa: E402  (importing ingest.scp installs ingest/netio.py)


def main() -> int:
    port, mode, directory = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    directory.mkdir(parents=True, exist_ok=True)

    def store(event: Any) -> int:
        if mode == "write":
            data = event.request.DataSet.getvalue()
            fd = os.open(directory / hashlib.sha256(data).hexdigest(), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        return 0x0000

    ae = AE(ae_title="FLOOR")
    ae.maximum_pdu_size = MAX_PDU
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    server = ae.make_server(("127.0.0.1", port), evt_handlers=[(evt.EVT_C_STORE, store)], server_class=_NoDelayServer)
    signal.signal(signal.SIGTERM, lambda *_: server.shutdown())
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
