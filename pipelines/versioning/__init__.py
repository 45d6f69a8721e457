"""Data versioning on DVC: remotes (local directory by default, any S3 endpoint), safe push/pull, and the history
of every dataset and embedding version recorded in `dvc.lock`.

- `remote`:  the S3 remote written into `.dvc/config.local` from environment variables; pre-flight checks that turn
             an unreachable endpoint, rejected credentials or a missing bucket into one readable line.
- `cache`:   integrity of the local DVC cache objects behind the tracked outputs (a corrupted object is named,
             never silently skipped or uploaded).
- `sync`:    `push` / `pull` = pre-flight + cache check + DVC's own transfer.
- `history`: `versions` (git log of dvc.lock) and `diff A B` (rows added/removed per source, embedding count).

No Airflow import here; the CLI (`llmops data ...`) is a thin layer over these functions.
"""
