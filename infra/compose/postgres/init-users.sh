#!/bin/sh
# Runs once on an empty data volume (docker-entrypoint-initdb.d), after init.sql.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" <<SQL
CREATE USER airflow WITH PASSWORD '${AIRFLOW_DB_PASSWORD}';
CREATE USER mlflow WITH PASSWORD '${MLFLOW_DB_PASSWORD}';
ALTER DATABASE airflow OWNER TO airflow;
ALTER DATABASE mlflow OWNER TO mlflow;
SQL
