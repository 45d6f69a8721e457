"""Training helpers used by the finetune stage (data formatting and the Ray Train worker loop)."""
