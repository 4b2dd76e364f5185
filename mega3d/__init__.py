"""mega3d: train spatiotemporal 3D CNNs for video action recognition on Kubeflow, or on one machine.

The one top-level import name mega3d installs. Its parts: `mega3d.trainer` (the spec, datasets, models,
training; torch only where it trains), `mega3d.components` (TorchX), `mega3d.pipelines` (KFP),
`mega3d.kubeflow` (the KFP REST client), `mega3d.report` (the paper's tables and figures), `mega3d.cli`,
and `mega3d.testing` (a GCS emulator for tests and benchmarks). Kept free of imports, so that importing
a torch-free part never pulls in torch.
"""
