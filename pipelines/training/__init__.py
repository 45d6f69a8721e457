"""Training helpers used by the finetune stage: data formatting and the Ray Train worker loop (`sft`), the lean
trainer (`trainer`), checkpoint storage, the loss curve and the MLflow lineage record (`lineage`)."""
