"""LLMSecOps: input normalization, detectors trained in the project (prompt injection / jailbreak, toxicity,
harmful compliance), the serving guard, leak audits and the gate's security rules."""
