# syntax=docker/dockerfile:1
# postflow's images. Every pip install goes through requirements/constraints.txt (the lock), so
# the images run exactly the versions the tests ran. What each image installs is written once, in
# pyproject.toml: `dependencies` plus the image's extra (`airflow`, `ml`; `mlflow-server` alone).
#
#   docker build --target airflow -t postflow-airflow:0.1.0 .   # scheduler, API server, ETL tasks
#   docker build --target ml      -t postflow-ml:0.1.0 .        # GPU pods: python -m ml <step>
#   docker build --target mlflow  -t postflow-mlflow:0.1.0 .    # tracking server (compose)
#
# `airflow`: the official Airflow image of the pinned version, our providers, DAGs, plugins,
# expectation suites and the `ml` package with what ETL and the weekly report import (pandas,
# pyarrow, Great Expectations, ConnectorX, MLflow client, matplotlib ...) but no torch:
# embedding and training run in the `ml` image, in Kubernetes pods.
# `ml`: Python 3.11 with torch/torchvision from the lock. PyPI's torch wheels carry their CUDA
# user-space libraries (the lock's nvidia-*-cu13 packages), so the base needs no CUDA toolkit;
# the node needs an NVIDIA driver that supports CUDA 13 and the NVIDIA container runtime.

ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11

# --------------------------------------------------------------------------- airflow
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION} AS airflow-build
USER root
# mysqlclient compiles against libmariadb when the lock's version differs from the image's
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config libmariadb-dev \
 && rm -rf /var/lib/apt/lists/*
USER airflow
COPY --chown=airflow:0 requirements/constraints.txt /tmp/postflow/requirements/constraints.txt
COPY --chown=airflow:0 requirements/extras.py /tmp/postflow/requirements/extras.py
COPY --chown=airflow:0 pyproject.toml /tmp/postflow/pyproject.toml
# The official image installs into ~/.local (PIP_USER); the final stage copies that tree.
# postflow's dependencies and its `airflow` extra, as pyproject.toml lists them; the code comes
# after, so this layer outlives code changes.
RUN python /tmp/postflow/requirements/extras.py airflow > /tmp/postflow/requirements.txt \
 && pip install --no-cache-dir -c /tmp/postflow/requirements/constraints.txt \
      -r /tmp/postflow/requirements.txt
COPY --chown=airflow:0 ml /tmp/postflow/ml
COPY --chown=airflow:0 plugins /tmp/postflow/plugins
RUN pip install --no-cache-dir --no-deps /tmp/postflow

FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION} AS airflow
COPY --from=airflow-build --chown=airflow:0 /home/airflow/.local /home/airflow/.local
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
COPY --chown=airflow:0 expectations /opt/airflow/expectations
ENV AIRFLOW__CORE__LOAD_EXAMPLES=False \
    POSTFLOW_EXPECTATIONS_DIR=/opt/airflow/expectations \
    POSTFLOW_CONFIG=""
USER airflow
# mount point of the SimpleAuthManager password volume (a new volume takes this owner)
RUN mkdir -p /opt/airflow/auth

# --------------------------------------------------------------------------- ml
FROM python:${PYTHON_VERSION}-slim-bookworm AS ml-build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config libmariadb-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements/constraints.txt /tmp/postflow/requirements/constraints.txt
COPY requirements/extras.py /tmp/postflow/requirements/extras.py
COPY pyproject.toml /tmp/postflow/pyproject.toml
# Everything `ml` imports, Airflow excluded: postflow's dependencies and its `ml` extra (torch and
# torchvision exactly as in the lock).
RUN python /tmp/postflow/requirements/extras.py ml > /tmp/postflow/requirements.txt \
 && pip install --no-cache-dir -c /tmp/postflow/requirements/constraints.txt \
      -r /tmp/postflow/requirements.txt
COPY ml /tmp/postflow/ml
COPY plugins /tmp/postflow/plugins
RUN pip install --no-cache-dir --no-deps /tmp/postflow

FROM python:${PYTHON_VERSION}-slim-bookworm AS ml
RUN apt-get update \
 && apt-get install -y --no-install-recommends libmariadb3 libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 postflow \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/postflow postflow
COPY --from=ml-build /opt/venv /opt/venv
COPY expectations /opt/postflow/expectations
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    POSTFLOW_EXPECTATIONS_DIR=/opt/postflow/expectations \
    POSTFLOW_CONFIG="" \
    HF_HUB_OFFLINE=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /home/postflow
USER 10001:10001
ENTRYPOINT ["python", "-m", "ml"]
CMD ["--help"]

# --------------------------------------------------------------------------- mlflow
# The tracking server of the compose stack: postflow's `mlflow-server` extra alone (MLflow, the
# PostgreSQL driver and boto3 for MinIO), without postflow itself, all from the lock.
FROM python:${PYTHON_VERSION}-slim-bookworm AS mlflow
COPY requirements/constraints.txt /tmp/postflow/requirements/constraints.txt
COPY requirements/extras.py /tmp/postflow/requirements/extras.py
COPY pyproject.toml /tmp/postflow/pyproject.toml
RUN python /tmp/postflow/requirements/extras.py --extras-only mlflow-server \
      > /tmp/postflow/requirements.txt \
 && pip install --no-cache-dir -c /tmp/postflow/requirements/constraints.txt \
      -r /tmp/postflow/requirements.txt \
 && rm -rf /tmp/postflow \
 && useradd --uid 10002 --create-home mlflow \
 && install -d -o mlflow -g mlflow /home/mlflow/auth
USER mlflow
WORKDIR /home/mlflow
ENTRYPOINT ["mlflow"]
CMD ["server", "--help"]
