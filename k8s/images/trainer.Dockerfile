# The training image: what torchrun runs on every node of a Volcano job (`python -m mega3d.trainer`), on GPUs.
# As long as the deployment settings name a single `image`, pipeline steps run in it too (it holds all of
# mega3d); k8s/images/launcher.Dockerfile is the light image for steps alone.
#
# Build from the repository root (the build context is the repository; .dockerignore keeps it small):
#   docker build -f k8s/images/trainer.Dockerfile -t REGISTRY/mega3d-trainer:0.1.0 .
#
# Base: PyTorch's CUDA runtime image, pinned by its exact tag. Its torch is the torch==2.13.0 that
# constraints.txt pins (the build checks it), built for CUDA 13.0 with cuDNN 9. The tag follows the pattern
# PyTorch publishes (`<torch>-cuda<cuda>-cudnn<cudnn>-runtime`, e.g. 2.9.0-cuda13.0-cudnn9-runtime); it was
# not pulled when this file was written: pull it once, then pin its digest as well
# (`FROM pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime@sha256:...`).
FROM pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/mega3d

# The dependencies first, in a layer of their own that a change of mega3d's code does not rebuild.
#
# constraints.txt pins torch==2.13.0, which on the project's CPU machines resolves to the CPU build. Here the
# base image's CUDA build must stay: its torch line is replaced with the exact version installed
# (e.g. torch==2.13.0+cu130), so pip finds torch already satisfied and can neither replace nor upgrade it.
# The build stops if the base image's torch is not the version constraints.txt pins, or has no CUDA.
COPY pyproject.toml constraints.txt README.md ./
RUN pinned="$(sed -n 's/^torch==//p' constraints.txt)" \
 && python -c "import sys, torch; v = torch.__version__; sys.exit(None if v.split('+')[0] == sys.argv[1] and torch.version.cuda else f'base image torch {v} (CUDA {torch.version.cuda}) is not torch {sys.argv[1]} with CUDA')" "$pinned" \
 && grep -v '^torch==' constraints.txt > /tmp/constraints.txt \
 && python -c "import torch; print(f'torch=={torch.__version__}')" >> /tmp/constraints.txt \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && python -m pip install -c /tmp/constraints.txt -r /tmp/requirements.txt

# mega3d itself; its dependencies are in place.
COPY mega3d ./mega3d
RUN python -m pip install --no-deps . \
 && python -c "import torch, mega3d.trainer.models, mega3d.pipelines.steps, mega3d.cli.main; print('mega3d on torch', torch.__version__, 'CUDA', torch.version.cuda)" \
 && rm -rf /tmp/constraints.txt /tmp/requirements.txt

# A numeric, unprivileged user: Kubernetes can only verify `runAsNonRoot` (set on mega3d's pods) for a
# numeric USER. HOME is its own, for the caches of torch.compile and matplotlib.
RUN groupadd --gid 10001 mega3d \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/mega3d --shell /usr/sbin/nologin mega3d
ENV HOME=/home/mega3d
USER 10001
