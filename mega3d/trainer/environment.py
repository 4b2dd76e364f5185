"""Environment variables through which the launcher tells training processes where their metrics go
(torch-free: the launcher image has no torch)."""

METRICS_PORT = "MEGA3D_METRICS_PORT"  # first port; each rank serves on it + its local rank
METRICS_ONE_HOST = "MEGA3D_METRICS_ONE_HOST"  # set: every rank shares one host, so + its global rank
PUSHGATEWAY = "MEGA3D_PUSHGATEWAY"  # Pushgateway URL for the final metrics of each stage
