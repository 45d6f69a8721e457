"""Evaluation at depth: task families (plug-ins with a documented JSONL format), a Ray Data runner with
model-holding actors that scores the candidate and its reference (champion or base) on the same examples,
paired bootstrap confidence intervals, an optional pairwise LLM judge. The evaluate stage wires them."""
