-- Two databases on one PostgreSQL: Airflow's metadata and MLflow's tracking store. Passwords are set by
-- init-users.sh from the environment (never written here).
CREATE DATABASE airflow;
CREATE DATABASE mlflow;
