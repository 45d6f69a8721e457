"""A `TorchTrainer` that starts fewer Ray processes for a small, fixed-size run.

Ray Train v2 starts several helper actors per `fit()`, each one a Python process that imports Ray (about 8 s of CPU
each on the 2-core dev box, all competing with the Train workers' own start-up):
- `DatasetManager` (from `DatasetsCallback`), even when no Ray Dataset is passed. This stage reads its data in the
  worker loop, so with `datasets` empty the callback is dropped, on a local instance and on a cluster alike.
- `PlacementGroupCleaner`, a detached actor that removes the run's placement group if the controller dies without
  cleaning up. On a local Ray instance that this process owns the whole instance goes away with the driver, so it
  is dropped there (`lean=True`); on a cluster (`engines.ray.address` set) it is kept.
- metrics callbacks (`RAY_TRAIN_METRICS_ENABLED`, set in `ray_engine.RAY_TRAIN_ENV_DEFAULTS`).
The callbacks are chosen in `DataParallelTrainer._create_default_callbacks` (Ray 2.60, Train v2); if that private
method is missing or changes shape, this class falls back to the stock behaviour.
"""
from __future__ import annotations

from ray.train.torch import TorchTrainer


class LeanTorchTrainer(TorchTrainer):
    def __init__(self, *args, lean: bool = True, **kwargs):
        self._lean = lean
        super().__init__(*args, **kwargs)

    def _create_default_callbacks(self):  # Ray Train v2 private hook, see module docstring
        callbacks = super()._create_default_callbacks()
        drop = set()
        if not getattr(self, "datasets", None):
            drop.add("DatasetsCallback")
        if getattr(self, "_lean", False):
            drop.add("PlacementGroupCleanerCallback")
        return [cb for cb in callbacks if type(cb).__name__ not in drop]
