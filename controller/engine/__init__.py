"""Where trials are born: Hyperband brackets, BOHB's model and the append-only ledger.

The engine knows nothing of processes or Kubernetes. Executors (``controller.local``,
``controller.kube``) poll :class:`Engine` for trials and report outcomes; see
``docs/engine.md`` for the contract.
"""

from controller.engine.core import MAX_ATTEMPTS, Engine
from controller.engine.ledger import JsonlLedger, Ledger, LedgerError, MemoryLedger
from controller.engine.types import (
    Condition,
    Incumbent,
    Progress,
    TrialOutcome,
    TrialRequest,
    TrialResult,
)

__all__ = [
    "MAX_ATTEMPTS",
    "Condition",
    "Engine",
    "Incumbent",
    "JsonlLedger",
    "Ledger",
    "LedgerError",
    "MemoryLedger",
    "Progress",
    "TrialOutcome",
    "TrialRequest",
    "TrialResult",
]
