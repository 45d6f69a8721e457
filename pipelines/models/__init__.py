"""Model helpers shared by evaluate, audit, gate, promote and serving: loading base + LoRA adapter, chat formatting,
batched generation and response-only likelihood (`lm`), the base model's preparation (`base_model`), scoring
(`evaluation`), red-teaming (`red_team`) with refusal / compliance detection (`safety`), the promotion gate's rules
(`gating`), the MLflow registry conventions (`registry`) and registering a candidate (`promotion`). Heavy imports
(torch, transformers, peft, mlflow) happen inside functions so importing this package is cheap."""
