"""A stream consumer that does the bridge's Redis work and nothing else (part 2 (d), raw round trips):
XREADGROUP (batch of `stream_batch`) -> one MULTI/EXEC with XADD outbound (MAXLEN ~), XACK, XDEL per entry.

    python -m bench.stream_echo REDIS_URL PREFIX GROUP CONSUMER
"""

from __future__ import annotations

import signal
import sys

import redis


def main(argv: list[str]) -> int:
    url, prefix, group, consumer = argv[:4]
    batch = int(argv[4]) if len(argv) > 4 else 100
    inbound, outbound = f"{prefix}:inbound", f"{prefix}:outbound"
    client = redis.Redis.from_url(url)
    try:
        client.xgroup_create(inbound, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        reply = client.xreadgroup(group, consumer, {inbound: ">"}, count=batch, block=200)
        entries = [(i, f) for _s, items in reply or [] for i, f in items if f]
        if not entries:
            continue
        pipe = client.pipeline(transaction=True)
        for entry_id, fields in entries:
            pipe.xadd(outbound, {"hl7": fields.get(b"hl7", b""), "control_id": "", "ack_code": "AA",
                                 "inbound_id": entry_id}, maxlen=1_000_000, approximate=True)
            pipe.xack(inbound, group, entry_id)
            pipe.xdel(inbound, entry_id)
        pipe.execute()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
