"""`mega3d report`'s work, apart from the command line: the paper's tables and figures from finished runs
(`mega3d.report.study`). Torch-free, so that scripts and notebooks can use it where training cannot run."""
