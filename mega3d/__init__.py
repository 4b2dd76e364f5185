"""mega3d: train spatiotemporal 3D CNNs for video action recognition on Kubeflow, or on one machine.

The one top-level import name mega3d installs; its packages are `mega3d.trainer`, `mega3d.components`,
`mega3d.pipelines` and `mega3d.cli`. Kept free of imports, so that importing the torch-free parts stays
quick and never pulls in torch.
"""
