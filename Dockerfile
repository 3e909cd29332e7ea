# GPU image for clusters. Base: python:3.11-slim rather than an NGC PyTorch image, because the
# project pins torch==2.14.1 / torchvision==0.29.1 and NGC images ship their own torch build that
# pip would replace anyway (several GB twice). PyPI's torch wheels bundle the CUDA runtime, and
# nvidia-dali-cuda130 bundles DALI, so the host only needs an NVIDIA driver and the container
# toolkit (docker run --gpus all / enroot / apptainer --nv).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    WANDB_MODE=offline ADAREM_CACHE=/work/.cache/adarem

# g++: Triton (AdaRem's fused CUDA path, trainer.compile) compiles its launcher with the system C
# compiler, and AdaRem's fused CPU kernel is built at first use for the CPU it runs on
RUN apt-get update \
 && apt-get install -y --no-install-recommends git libgomp1 g++ \
 && rm -rf /var/lib/apt/lists/*

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

RUN mkdir -p /work && chown adarem:adarem /work
USER adarem
# runs, multirun sweeps and caches go to /work: mount a shared filesystem there
WORKDIR /work
ENTRYPOINT ["adarem-train"]
CMD ["--help"]
