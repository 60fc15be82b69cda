"""A test-only hook that kills the process at a named point, to prove that no kill can lose or
corrupt a run (tests/training/test_faults.py).

``LORACLF_FAULT=checkpoint.renamed:2`` sends SIGKILL to this process the second time it passes
``fault("checkpoint.renamed")``; ``LORACLF_FAULT=train.step:5:INT`` sends SIGINT (a Ctrl-C) instead.
Unset (always, outside those tests) the hook costs one dict lookup. It ships in the package, so a
stray LORACLF_FAULT in an environment would kill a real run: the variable is named for nothing else.
"""

from __future__ import annotations

import os
import signal

ENV = "LORACLF_FAULT"
_seen: dict[str, int] = {}


def fault(point: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, rest = spec.partition(":")
    if name != point:
        return
    nth, _, sig = rest.partition(":")
    _seen[point] = _seen.get(point, 0) + 1
    if _seen[point] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGINT if sig == "INT" else signal.SIGKILL)
