"""A separate process that uses the event log, so tests can kill -9 it mid-work.

python -m tests.support.logproc append URL TOPIC COUNT     prints "acked PARTITION OFFSET KEY" per durable append
python -m tests.support.logproc consume URL GROUP TOPIC COMMIT_FIRST
    polls, prints "got PARTITION OFFSET" for each record, commits only the first COMMIT_FIRST
    records, prints "committed", then waits to be killed (a crash before the next commit)
"""

from __future__ import annotations

import sys
import time

from streams import open_event_log


def append(url: str, topic: str, count: int) -> None:
    log = open_event_log(url)
    for i in range(count):
        key = f"study-{i % 7}".encode()
        pos = log.append(topic, key, f"event-{i}".encode())
        print(f"acked {pos.partition} {pos.offset} {key.decode()} event-{i}", flush=True)
    print("done", flush=True)
    time.sleep(3600)


def consume(url: str, group: str, topic: str, commit_first: int) -> None:
    log = open_event_log(url)
    consumer = log.consumer(group, [topic])
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for record in consumer.poll(100, 0.5):
            seen.append(record)
            print(f"got {record.partition} {record.offset}", flush=True)
        if len(seen) >= commit_first and seen:
            consumer.commit(seen[:commit_first])
            print("committed", flush=True)
            break
    time.sleep(3600)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "append":
        append(args[0], args[1], int(args[2]))
    elif command == "consume":
        consume(args[0], args[1], args[2], int(args[3]))
    else:
        sys.exit(f"unknown command {command}")
