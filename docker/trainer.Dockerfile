# The trainer image: runs one trial (python -m trainer) on a GPU; no dataset inside.
#
#   docker/build.sh trainer         (tags nas-bohb/trainer:<project version>)
#
# CUDA comes with PyTorch's Linux wheels (the CUDA runtime, cuDNN and NCCL as pip
# packages), so the base is plain Python and requirements/torch.txt stays the one place
# that pins torch; the node's NVIDIA container runtime injects the driver.

# Pinned to an exact Python and Debian release; bump deliberately.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements/torch.txt requirements/torch.txt
# torch first, from the project's pin, so the layer survives code changes.
RUN pip install --no-compile -r requirements/torch.txt
COPY pyproject.toml README.md ./
COPY trainer/ trainer/
COPY controller/ controller/
# The trainer extra only: no kopf, hpbandster or Kubernetes client. (The project itself is
# the package installed here; torch is pinned by the step above.)
# hadolint ignore=DL3013
RUN pip install --no-compile ".[trainer]"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="nas-bohb-trainer" \
      org.opencontainers.image.description="nas-bohb trainer: one CIFAR-10 trial per run" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/venv /opt/venv
# The dataset is not baked in: each pod downloads (or mounts) it into the cache below.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/trainer \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN mkdir -p /home/trainer/.cache/nas-bohb && chown -R 10001:10001 /home/trainer
# A numeric user, so Kubernetes can verify runAsNonRoot.
USER 10001:10001
WORKDIR /home/trainer
ENTRYPOINT ["python", "-m", "trainer"]
