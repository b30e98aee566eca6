# postflow's images. Every pip install goes through requirements/constraints.txt (the lock), so
# the images run exactly the versions the tests ran. What each image installs is written once, in
# pyproject.toml: `dependencies` plus the image's extra (`airflow`, `ml`; `mlflow-server` alone).
#
#   docker build --target airflow   -t postflow-airflow:0.1.0 .    # scheduler, API server, workers
#   docker build --target ml        -t postflow-ml:0.1.0 .         # GPU pods: python -m ml <step>
#   docker build --target ml-worker -t postflow-ml-worker:0.1.0 \  # compose: Celery worker of
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .  # the `ml` queue
#   docker build --target mlflow    -t postflow-mlflow:0.1.0 .     # tracking server (compose)
#
# Every image derives from one Debian bookworm Python 3.11 base (PYTHON_BASE) and installs into
# /opt/venv: Airflow itself comes from the lock (apache-airflow==3.3.2, as in the official image),
# so a site that cannot pull python:3.11-slim-bookworm passes its own base (`make stack-test`
# builds one with debootstrap) and changes nothing else. pip's own settings pass through as build
# args (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX, PIP_TRUSTED_HOST): a
# mirror or a wheelhouse (`pip wheel -c requirements/constraints.txt ...`) for offline builds.
#
# `airflow`: Airflow, our providers (MySQL, SMTP, Kubernetes, Celery, FAB), DAGs, plugins,
# expectation suites and the `ml` package with what ETL and the weekly report import (pandas,
# pyarrow, Great Expectations, ConnectorX, MLflow client, matplotlib ...) but no torch.
# `ml`: torch/torchvision from the lock. PyPI's torch wheels carry their CUDA user-space libraries
# (the lock's nvidia-*-cu13 packages), so the base needs no CUDA toolkit; the node needs an NVIDIA
# driver that supports CUDA 13 and the NVIDIA container runtime. ResNet50's ImageNet weights are
# fetched at build time by torchvision (checksum checked) into TORCH_HOME, so pods never download:
# see deploy/docker/resnet50_weights.py for a build with no network.
# `ml-worker`: what the `ml` image holds plus Airflow: the compose stack's Celery worker of the `ml` queue
# (embed, train run there as subprocesses). TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# gives the lock's torch version as CPU wheels (`2.14.1+cpu` satisfies `==2.14.1`).

ARG PYTHON_BASE=python:3.11-slim-bookworm

# --------------------------------------------------------------------------- python
FROM ${PYTHON_BASE} AS python
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    POSTFLOW_CONFIG=""
RUN apt-get update \
 && apt-get install -y --no-install-recommends libmariadb3 libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 postflow \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/postflow postflow \
 && useradd --uid 50000 --gid 0 --create-home --home-dir /home/airflow airflow

# What each image installs, as pyproject.toml lists it (requirements/extras.py), one file per
# image: the install layers below depend on these files' contents only, so an edit elsewhere in
# pyproject.toml (tool settings) keeps their cache.
FROM python AS requirements
COPY requirements/extras.py /tmp/postflow/requirements/extras.py
COPY pyproject.toml /tmp/postflow/pyproject.toml
RUN mkdir /tmp/postflow/req \
 && python3 /tmp/postflow/requirements/extras.py airflow > /tmp/postflow/req/airflow.txt \
 && python3 /tmp/postflow/requirements/extras.py ml > /tmp/postflow/req/ml.txt \
 && python3 /tmp/postflow/requirements/extras.py --extras-only airflow \
      > /tmp/postflow/req/airflow-only.txt \
 && python3 /tmp/postflow/requirements/extras.py --extras-only mlflow-server \
      > /tmp/postflow/req/mlflow-server.txt

FROM python AS build
# mysqlclient compiles against libmariadb (PyPI has no Linux wheel of it)
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config libmariadb-dev \
      python3-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
COPY requirements/constraints.txt /tmp/postflow/requirements/constraints.txt

# --------------------------------------------------------------------------- airflow
FROM build AS airflow-build
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ARG PIP_TRUSTED_HOST
# postflow's dependencies and its `airflow` extra; the code comes after, so this layer outlives
# code changes.
COPY --from=requirements /tmp/postflow/req/airflow.txt /tmp/postflow/requirements.txt
RUN pip install --no-cache-dir -c /tmp/postflow/requirements/constraints.txt \
      -r /tmp/postflow/requirements.txt
COPY pyproject.toml /tmp/postflow/pyproject.toml
COPY ml /tmp/postflow/ml
COPY plugins /tmp/postflow/plugins
RUN pip install --no-cache-dir --no-deps /tmp/postflow

FROM python AS airflow
COPY --from=airflow-build /opt/venv /opt/venv
COPY dags /opt/airflow/dags
COPY plugins /opt/airflow/plugins
COPY expectations /opt/airflow/expectations
# the official image's /entrypoint contract (the Helm chart's commands and probes run through it):
# bash/python as given, anything else an `airflow` subcommand, after waiting for the metadata DB
COPY deploy/airflow/entrypoint.sh /entrypoint
# the metadata DB's migrations and the FAB users: compose's airflow-init, the chart's migration job
COPY deploy/airflow/airflow-init.sh /opt/postflow/airflow-init.sh
ENV AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    POSTFLOW_EXPECTATIONS_DIR=/opt/airflow/expectations
# AIRFLOW_HOME is Airflow's to write (airflow.cfg); the logs volume takes this owner
RUN install -d -o 50000 -g 0 -m 2775 /opt/airflow /opt/airflow/logs && chmod 0755 /entrypoint
WORKDIR /opt/airflow
USER 50000:0
ENTRYPOINT ["/entrypoint"]
CMD ["version"]

# --------------------------------------------------------------------------- ml
# Layers that change least come first: the ML dependencies (ml-deps), then the weights
# (ml-weights) and, apart, the code (ml-build, ml-worker-build), so a code change neither
# reinstalls Airflow into the ML worker nor fetches and checks the weights again.
FROM build AS ml-deps
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ARG PIP_TRUSTED_HOST
# empty: PyPI's CUDA wheels (GPU pods); https://download.pytorch.org/whl/cpu: CPU wheels
ARG TORCH_INDEX_URL=""
# Everything `ml` imports, Airflow excluded: postflow's dependencies and its `ml` extra (torch and
# torchvision exactly as in the lock).
COPY --from=requirements /tmp/postflow/req/ml.txt /tmp/postflow/requirements.txt
RUN pip install --no-cache-dir ${TORCH_INDEX_URL:+--extra-index-url=$TORCH_INDEX_URL} \
      -c /tmp/postflow/requirements/constraints.txt -r /tmp/postflow/requirements.txt

# ResNet50 ImageNet weights into TORCH_HOME (torchvision's download, checksum checked; or the
# file deploy/docker/resnet50-11ad3fa6.pth, same check). RESNET50_WEIGHTS=none: no weights, the
# image embeds with random weights (tagged so): for test stacks on machines with no network only.
FROM ml-deps AS ml-weights
ARG RESNET50_WEIGHTS=imagenet
ENV TORCH_HOME=/opt/torch
COPY deploy/docker /tmp/postflow/docker
RUN mkdir -p "$TORCH_HOME" \
 && python /tmp/postflow/docker/resnet50_weights.py "$RESNET50_WEIGHTS" /tmp/postflow/docker

FROM ml-deps AS ml-build
COPY pyproject.toml /tmp/postflow/pyproject.toml
COPY ml /tmp/postflow/ml
COPY plugins /tmp/postflow/plugins
RUN pip install --no-cache-dir --no-deps /tmp/postflow

FROM python AS ml
ARG RESNET50_WEIGHTS=imagenet
COPY --from=ml-build /opt/venv /opt/venv
COPY --from=ml-weights /opt/torch /opt/torch
COPY expectations /opt/postflow/expectations
# No NVIDIA_VISIBLE_DEVICES here: which GPUs a container sees is the runtime's call (the device
# plugin sets it for the GPUs a pod requested); baked in as `all`, a pod without a GPU request on
# a GPU node would see every GPU of the node.
ENV POSTFLOW_EXPECTATIONS_DIR=/opt/postflow/expectations \
    POSTFLOW_IMAGE_WEIGHTS=${RESNET50_WEIGHTS} \
    TORCH_HOME=/opt/torch \
    HF_HUB_OFFLINE=1
WORKDIR /home/postflow
USER 10001:10001
ENTRYPOINT ["python", "-m", "ml"]
CMD ["--help"]

# --------------------------------------------------------------------------- ml-worker
FROM ml-deps AS ml-worker-build
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ARG PIP_TRUSTED_HOST
COPY --from=requirements /tmp/postflow/req/airflow-only.txt /tmp/postflow/requirements-airflow.txt
RUN pip install --no-cache-dir -c /tmp/postflow/requirements/constraints.txt \
      -r /tmp/postflow/requirements-airflow.txt
COPY pyproject.toml /tmp/postflow/pyproject.toml
COPY ml /tmp/postflow/ml
COPY plugins /tmp/postflow/plugins
RUN pip install --no-cache-dir --no-deps /tmp/postflow

FROM python AS ml-worker
ARG RESNET50_WEIGHTS=imagenet
COPY --from=ml-worker-build /opt/venv /opt/venv
COPY --from=ml-weights /opt/torch /opt/torch
COPY dags /opt/airflow/dags
COPY plugins /opt/airflow/plugins
COPY expectations /opt/airflow/expectations
COPY deploy/airflow/entrypoint.sh /entrypoint
ENV AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    POSTFLOW_EXPECTATIONS_DIR=/opt/airflow/expectations \
    POSTFLOW_IMAGE_WEIGHTS=${RESNET50_WEIGHTS} \
    TORCH_HOME=/opt/torch \
    HF_HUB_OFFLINE=1
RUN install -d -o 50000 -g 0 -m 2775 /opt/airflow /opt/airflow/logs && chmod 0755 /entrypoint
WORKDIR /opt/airflow
USER 50000:0
ENTRYPOINT ["/entrypoint"]
CMD ["celery", "worker", "--queues", "ml"]

# --------------------------------------------------------------------------- mlflow
# The tracking server of the compose stack: postflow's `mlflow-server` extra alone (MLflow, the
# PostgreSQL driver and boto3 for the S3 store), without postflow itself, all from the lock.
FROM python AS mlflow-build
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ARG PIP_TRUSTED_HOST
RUN python3 -m venv /opt/venv
COPY requirements/constraints.txt /tmp/postflow/requirements/constraints.txt
COPY --from=requirements /tmp/postflow/req/mlflow-server.txt /tmp/postflow/requirements.txt
RUN pip install --no-cache-dir -c /tmp/postflow/requirements/constraints.txt \
      -r /tmp/postflow/requirements.txt

FROM python AS mlflow
COPY --from=mlflow-build /opt/venv /opt/venv
RUN useradd --uid 10002 --create-home mlflow \
 && install -d -o mlflow -g mlflow /home/mlflow/auth
USER mlflow
WORKDIR /home/mlflow
ENTRYPOINT ["mlflow"]
CMD ["server", "--help"]
