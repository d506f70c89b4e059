"""The queues: how messages reach rxgate and how answers go back (docs/interfaces.md §3, §5).

    bridge.py            the Redis-stream consumer: rxgate:inbound -> judged -> rxgate:outbound, XACK only
                         while it still owns the entry (one Lua script), heartbeats, per-patient order
    celery_app.py        the Celery app, built on demand (get_app); Redis or RabbitMQ (quorum queue) broker
    tasks.py             the Celery task rxgate.validate (one task = one delivery)
    mllp.py              the MLLP listener (plain or TLS via tls.py), original and enhanced acknowledgment
    verdicts.py          submit a message to the stream and await its verdict (MLLP, POST /hl7)
    replies.py           answers sent back to the sender's own MLLP listener (reply-to)
    deadletters.py       rxgate:deadletter for operators: list, resend, drop
    amqp_deadletters.py  RabbitMQ's dead-lettered tasks drained into rxgate:deadletter
    embedded.py          the embedded Redis of `make run`, and which broker URL applies
    sentinel.py          Redis Sentinel clients

Nothing here runs at import time: each module only defines.
"""

__all__ = ["amqp_deadletters", "bridge", "celery_app", "deadletters", "embedded", "mllp", "replies",
           "sentinel", "tasks", "tls", "verdicts"]
