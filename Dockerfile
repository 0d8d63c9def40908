# The Airflow image with this provider baked in. Built by docker-compose.yaml (`docker compose
# build`), or alone: docker build -t airflow-pool-provider .
#
# The Airflow version and Python are pinned to what the project is tested with (./dev).
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11

# A wheel of this repository, built from its own files only.
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION} AS wheel
# The image runs pip as the airflow user, who owns /opt/airflow (pip builds in the source tree).
COPY --chown=airflow:0 pyproject.toml README.md /opt/airflow/provider-src/
COPY --chown=airflow:0 airflow_pool_provider /opt/airflow/provider-src/airflow_pool_provider
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /opt/airflow/wheels /opt/airflow/provider-src

FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}
ARG AIRFLOW_VERSION
# pg_dump and pg_restore for the migrations' schema stages, of the major of the databases in
# docker-compose.yaml (PostgreSQL 15): the image ships the PostgreSQL project's newest client,
# whose pg_restore writes settings an older server does not know; the migration finds every
# installed major and uses the oldest that reads the source.
ARG POSTGRES_CLIENT_MAJOR=15
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends "postgresql-client-${POSTGRES_CLIENT_MAJOR}" \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*
USER airflow
COPY --from=wheel --chown=airflow:0 /opt/airflow/wheels /tmp/wheels
# Installing apache-airflow at the image's own version keeps pip from up- or downgrading it.
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels
