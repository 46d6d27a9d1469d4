# Ratchet: the service (`ratchet serve`) and the trainer it starts (`python -m trainer run`).
# vLLM is not in this image: it runs from the official vllm/vllm-openai image (deploy/compose.yaml).
#
#   docker build -t ratchet .                       # CUDA torch from PyPI (GPU hosts), ~6 GB
#   docker build -t ratchet:cpu \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .   # CPU-only torch, ~1.3 GB
#
# Data (DuckDB file, snapshots, adapters) lives under the /data volume; settings come from
# RATCHET_* environment variables (see deploy/README.md). Runs as uid 10001, not root.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtual environment with Ratchet and its training dependencies -------------------
FROM ${PYTHON_IMAGE} AS build
# torch is chosen here, not in pyproject: the CUDA wheel for GPU hosts, the CPU one otherwise.
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first, in their own layers, so that a code change does not reinstall torch.
# hadolint ignore=DL3013
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
      pip install --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"; \
    else \
      pip install "$TORCH_SPEC"; \
    fi
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(d for d in p['dependencies'] + p['optional-dependencies']['train'] if not d.startswith('ratchet')))" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt
COPY service/ service/
COPY trainer/ trainer/
COPY evals/ evals/
COPY deploy/ deploy/
COPY formats/ formats/
# The demo package (`ratchet demo`, `ratchet tiny-model`): small, and a tiny base model built in
# the container is the quickest try-out; nothing of the product imports it (lint-imports).
COPY demo/ demo/
RUN pip install --no-deps . \
 && python -c "import service, trainer, evals, deploy, formats" \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# --- runtime ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 ratchet \
 && useradd --system --uid 10001 --gid ratchet --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin ratchet \
 && mkdir -p /data/adapters /models \
 && chown -R ratchet:ratchet /data /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RATCHET_DATA_DIR=/data \
    RATCHET_HOST=0.0.0.0 \
    RATCHET_PORT=8470
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8470
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RATCHET_PORT', '8470'), timeout=4)"]
ENTRYPOINT ["ratchet"]
CMD ["serve"]
