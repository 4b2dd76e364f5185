"""Environment variables through which the launcher tells training processes where their metrics go
(torch-free: the launcher image has no torch)."""

METRICS_PORT = "MEGA3D_METRICS_PORT"  # first port; each rank serves on it + its local rank
METRICS_ONE_HOST = "MEGA3D_METRICS_ONE_HOST"  # set: every rank shares one host, so + its global rank
PUSHGATEWAY = "MEGA3D_PUSHGATEWAY"  # Pushgateway URL for the final metrics of each stage
RUN = "MEGA3D_RUN"  # the run id, a label of every series: runs of one experiment stay apart
BRANCH = "MEGA3D_BRANCH"  # the sweep branch ("" without a sweep), a label of every series
# Set on cluster nodes that were given GPUs: a process that finds fewer GPUs than its node's processes fails
# at once instead of training on CPU (locally, a GPU stage falls back to CPU on a machine without GPUs).
GPUS_REQUIRED = "MEGA3D_GPUS_REQUIRED"
NODE_NAME = "MEGA3D_NODE_NAME"  # the Kubernetes node a pod runs on (downward API: spec.nodeName)
