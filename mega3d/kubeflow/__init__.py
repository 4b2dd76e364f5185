"""Kubeflow Pipelines' REST API as the cluster commands use it (`mega3d.kubeflow.client`). Kept free of
imports: kfp is imported by the client module only, which the commands import when they run."""
