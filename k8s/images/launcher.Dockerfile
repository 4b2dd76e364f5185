# The light image for Kubeflow pipeline steps: preparing data, submitting each training stage to Volcano
# through TorchX and following it, registering models, writing reports. Training itself runs in the trainer
# image (k8s/images/trainer.Dockerfile), so this one has no torch: the steps and the CLI never import it.
#
# Build from the repository root (the build context is the repository; .dockerignore keeps it small):
#   docker build -f k8s/images/launcher.Dockerfile -t REGISTRY/mega3d-launcher:0.1.0 .
#
# Base: Python 3.11 (what the project is developed and tested with) on Debian 12 slim, pinned by its exact
# tag; pin its digest as well once pulled (`FROM python:3.11.14-slim-bookworm@sha256:...`).
FROM python:3.11.14-slim-bookworm

# mega3d's dependencies that only training needs: torch and video decoding (PyAV, h5py for the reference
# HDF5 layout). Everything else in pyproject.toml is installed, at the versions constraints.txt pins;
# tests/k8s/test_images.py checks that the steps' and the CLI's modules import without these.
ARG TRAINING_ONLY="torch av h5py"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/mega3d

# The dependency list is read from pyproject.toml, less the training-only packages, so that it cannot drift
# from the project's; pip then installs mega3d itself with --no-deps (its torch pin stays unresolved).
COPY pyproject.toml constraints.txt README.md ./
RUN python -c "import re, sys, tomllib; skip = set(sys.argv[1:]); deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(d for d in deps if re.match(r'[A-Za-z0-9._-]+', d)[0].lower() not in skip))" $TRAINING_ONLY > /tmp/requirements.txt \
 && python -m pip install -c constraints.txt -r /tmp/requirements.txt

COPY mega3d ./mega3d
RUN python -m pip install --no-deps . \
 && python -c "import mega3d.pipelines.steps, mega3d.pipelines.tasks, mega3d.pipelines.launcher, mega3d.cli.main" \
 && python -c "import importlib.util, sys; sys.exit([m for m in sys.argv[1:] if importlib.util.find_spec(m)] or None)" $TRAINING_ONLY \
 && rm /tmp/requirements.txt

# A numeric, unprivileged user: Kubernetes can only verify `runAsNonRoot` (set on every step) for a numeric
# USER.
RUN groupadd --gid 10001 mega3d \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/mega3d --shell /usr/sbin/nologin mega3d
ENV HOME=/home/mega3d
USER 10001

CMD ["mega3d", "--help"]
