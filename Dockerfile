# GPU image for clusters. Base: python:3.11-slim rather than an NGC PyTorch image, because the
# project pins torch==2.14.1 / torchvision==0.29.1 and NGC images ship their own torch build that
# pip would replace anyway (several GB twice). PyPI's torch wheels bundle the CUDA runtime, and
# nvidia-dali-cuda130 bundles DALI, so the host only needs an NVIDIA driver and the container
# toolkit (docker run --gpus all / enroot / apptainer --nv).
# Build from the repository's root (slurm/README.md "Inside a container"): docker build -t adarem .
# BuildKit is needed (RUN --mount, below): Docker's default builder since 23.0; the legacy builder
# (DOCKER_BUILDKIT=0) refuses this file.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    WANDB_MODE=offline ADAREM_CACHE=/work/.cache/adarem

# g++: Triton (AdaRem's fused CUDA path, trainer.compile) compiles its launcher with the system C
# compiler, and AdaRem's fused CPU kernel is built at first use for the CPU it runs on
RUN apt-get update \
 && apt-get install -y --no-install-recommends git libgomp1 g++ \
 && rm -rf /var/lib/apt/lists/*

# The commit this image is built from, computed by git on the build context: the only stage that
# sees .git (.dockerignore lets it in for this), and only through a read-only bind mount of the
# context for this one RUN, so that no layer (none cached, none a --cache-to mode=max exports)
# holds the context, its .git (whose config may hold remote URLs with tokens) or its untracked
# files: the stage's one layer is /build-info.json. Whether the files copied below (the same
# paths), this Dockerfile and .dockerignore are exactly that commit's is decided here too
# (adarem/run/build_info.py). A context without .git still builds: it records commit null.
FROM base AS build-info
WORKDIR /src
RUN --mount=type=bind,target=/src \
    python -P adarem/run/build_info.py describe . pyproject.toml README.md adarem configs train.py scripts slurm \
    Dockerfile .dockerignore > /build-info.json

FROM base
RUN useradd --create-home --uid 1000 adarem
WORKDIR /opt/adarem

# dependencies first (cached layer), then the code; both come from pyproject.toml, which installs
# configs/ with the package (adarem.configs) and the console scripts adarem-train/-compare/-tables
COPY pyproject.toml README.md ./
COPY adarem ./adarem
COPY configs ./configs
RUN pip install torch==2.14.1 torchvision==0.29.1 ".[all,dali]"
COPY train.py ./
COPY scripts ./scripts
COPY slurm ./slurm

# One copy of the code in the image, the installed one: the sources it was installed from go (so
# `python train.py` here imports the installed package), and the installed package gets the
# build-info stage's description with a hash of its files (adarem/_build.json), which run.json's
# git reads back: {"commit": ..., "dirty": ..., "source": "image build"}
COPY --from=build-info /build-info.json /tmp/build-info.json
RUN rm -rf adarem configs build adarem.egg-info \
 && python -P -m adarem.run.build_info seal /tmp/build-info.json \
 && rm /tmp/build-info.json

RUN mkdir -p /work && chown adarem:adarem /work
USER adarem
# runs, multirun sweeps and caches go to /work: mount a shared filesystem there
WORKDIR /work
ENTRYPOINT ["adarem-train"]
CMD ["--help"]
