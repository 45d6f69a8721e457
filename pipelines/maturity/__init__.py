"""The LLMOps maturity scorecard (`llmops maturity`): Level 1 and Level 2 criteria and the seed's 10 challenges,
each scored from evidence in the repository and the deployment, never from a declaration."""
