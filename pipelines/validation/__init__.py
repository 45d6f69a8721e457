"""Data validation helpers (Great Expectations 1.x). Nothing here imports GX at module level: it takes ~15 s."""
