"""LLMOps lifecycle stages: plain functions with typed configs, called by the CLI, `dvc repro` and Airflow."""
