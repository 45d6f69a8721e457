"""Model helpers shared by evaluate, audit, promote and serving: loading base + LoRA adapter, chat formatting,
batched generation and response-only likelihood (`lm`), refusal / compliance detection (`safety`) and the
MLflow registry conventions (`registry`). Heavy imports (torch, transformers, peft, mlflow) happen inside
functions so importing this package is cheap."""
