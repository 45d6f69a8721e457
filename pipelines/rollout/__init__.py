"""Progressive delivery: canary and shadow rollouts of a registered version, decided by live evidence.

- `state`: the rollout state every serving replica reads (RolloutStore, assign_challenger);
- `config`: the typed `rollout:` section of params.yaml;
- `logs`: the request and feedback logs of every replica (files, folders, hour-partitioned object store);
- `sequential`: anytime-valid confidence sequences (valid under repeated looks);
- `analysis`: per-arm metrics and the decision (advance / hold / rollback / complete);
- `lifecycle`: starting a rollout at promote, applying a decision, moving the registry aliases.
"""
from pipelines.rollout.state import (RolloutState, RolloutStateError, RolloutStore, Step, assign_challenger,
                                     new_rollout, store_for)

__all__ = ["RolloutState", "RolloutStateError", "RolloutStore", "Step", "assign_challenger", "new_rollout",
           "store_for"]
