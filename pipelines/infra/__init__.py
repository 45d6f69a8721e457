"""Deployment material (infra/compose, infra/k8s) checked offline: schemas, policies, consistency with params.yaml."""
