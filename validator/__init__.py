"""rxgate's pure core: HL7 pharmacy orders in, GO protocol verdicts and HL7 responses out.

No Redis, Celery, SQL or HTTP here: the course history and audit store are
ports (`validator.history.Store`) implemented in `workers/`.
"""

from .errors import MessageRejected, ProtocolError
from .history import BatchedStore, InMemoryStore, Store
from .protocol import Protocol, load_protocol
from .service import Outcome, process_delivery, process_message, process_text
from .verdict import Judgement, judge

__all__ = [
    "BatchedStore",
    "InMemoryStore",
    "Judgement",
    "MessageRejected",
    "Outcome",
    "Protocol",
    "ProtocolError",
    "Store",
    "judge",
    "load_protocol",
    "process_delivery",
    "process_message",
    "process_text",
]
