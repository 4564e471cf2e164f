# The operator image: kopf, the BOHB engine and Prometheus metrics; no PyTorch.
#
#   docker/build.sh controller      (tags nas-bohb/controller:<project version>)
#
# Two stages: the builder has a C compiler (hpbandster needs netifaces, which has no wheel
# for Python 3.11), the final image only the virtual environment.

# Pinned to an exact Python and Debian release; bump deliberately.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# The compiler only lives in this throw-away stage; Debian's versions move with security
# fixes within the pinned release, so they are not pinned one by one.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY trainer/ trainer/
COPY controller/ controller/
# The controller extra only: the search side never imports torch. The build fails if torch
# came in through some dependency. (The project itself is the package installed here; its
# dependencies carry lower bounds in pyproject.toml.)
# hadolint ignore=DL3013
RUN pip install --no-compile ".[controller]" \
    && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="nas-bohb-controller" \
      org.opencontainers.image.description="nas-bohb operator: BOHB searches as Kubernetes Jobs" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# A numeric user, so Kubernetes can verify runAsNonRoot; no home, nothing writable but /tmp.
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "controller.kube"]
