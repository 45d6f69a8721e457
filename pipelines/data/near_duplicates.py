"""Near-duplicate detection: what "near-duplicate" means in this project, for dedup and validation alike.

(The detection code moves here from pipelines/stages/dedup.py; see the issue's plan.)
"""
from __future__ import annotations

from pydantic import Field, model_validator

from pipelines.config import StageConfig


class NearDuplicate(StageConfig):
    """`dedup.near_duplicate` in params.yaml: dedup drops by it, and the validate suite measures by it."""

    enabled: bool
    shingle: int = Field(ge=1)  # word n-grams of the normalized text
    num_perm: int = Field(ge=1)
    bands: int = Field(ge=1)
    rows: int = Field(ge=1)
    threshold: float = Field(gt=0.0, le=1.0)  # exact shingle Jaccard a candidate pair must reach
    # All pairs up to this bucket size, a star beyond. On t0 (bench/bench_dedup.py) 50 drops the same documents as
    # clustering all true pairs but verifies only 60% of the pairs directly; 200 finds every pair at 1.3-1.9x time.
    max_bucket_size: int = Field(ge=2)
    driver_components_max_edges: int = Field(ge=0)  # union-find on the driver up to this many edges, else Spark
    report_clusters: int = Field(ge=0)  # largest clusters shown in the cluster report
    report_examples: int = Field(ge=1)  # texts shown per cluster

    @model_validator(mode="after")
    def _bands_fit(self) -> "NearDuplicate":
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self

    def rule(self) -> str:
        return (
            f"minhash jaccard>={self.threshold} word-{self.shingle}-gram shingles perm={self.num_perm} "
            f"bands={self.bands}x{self.rows}, verified on exact shingle Jaccard; duplicate_of = smallest doc_id "
            "of the connected component"
        )
