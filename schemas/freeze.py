"""Record the current event schemas as released versions: ``python -m schemas.freeze``.

Run it after changing a schema under ``avro/events`` or ``avro/types``. It writes
``avro/history/<Type>.v<N>.avsc`` for every schema whose current form is not recorded yet.
The evolution test then proves that every recorded version is still readable.
"""

from __future__ import annotations

import json
import sys

from schemas.registry import AVRO_DIR, expanded, registry


def freeze() -> list[str]:
    written = []
    for event_type, schema in sorted(registry().events.items()):
        if schema.frozen:
            continue
        path = AVRO_DIR / "history" / f"{event_type}.v{schema.current.version}.avsc"
        path.write_text(json.dumps(expanded(event_type), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path.name)
    registry.cache_clear()
    return written


def main() -> int:
    written = freeze()
    for name in written:
        print(f"recorded {name}")
    if not written:
        print("all event schemas are already recorded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
