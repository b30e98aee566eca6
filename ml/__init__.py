"""postflow's domain, one package per stage of the nightly pipeline: `lake` (partitions and
schemas), `ingest` (MySQL to clean posts), `features` (embeddings), `learn` (labels, splits,
models, MLflow), `report` (the weekly email); `demo` generates posts. No Airflow here."""

__version__ = "0.1.0"
