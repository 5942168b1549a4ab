"""A hospital's privacy ledger: every DP release it made in this run, kept between messages.

The ledger lives in the node's Flower context state (`Context.state`), which Flower keeps per node
and run across messages, in simulation and at a real SuperNode, so FedAvg's rounds compose at the
hospital: the accountant runs across rounds, and a round beyond the budget is refused there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from fl_app.privacy.accounting import Mechanism, epsilon_spent

LEDGER_KEY = "privacy-ledger"


@dataclass
class Ledger:
    history: list[Mechanism] = field(default_factory=list)

    def epsilon(self, delta: float) -> float:
        return epsilon_spent(self.history, delta)

    def to_json(self) -> str:
        return json.dumps([list(m) for m in self.history])

    @classmethod
    def from_json(cls, text: str) -> Ledger:
        return cls([(float(s), float(q), int(n)) for s, q, n in json.loads(text)])
