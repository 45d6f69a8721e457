"""The data flywheel (issue 31): rated production answers become versioned training data.

`harvest` (pipelines/flywheel/harvest.py) turns the request and feedback logs into a landing batch of SFT records
and preference pairs, with consent, privacy and poisoning bounds; the landing inbox, ingest and the lifecycle take
it from there. No Airflow here: `llmops flywheel harvest` and dags/llmops_flywheel.py call the same function.
"""
