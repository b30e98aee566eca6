"""postflow's domain: extraction, validation, sanitising, features and models. No Airflow here."""

__version__ = "0.1.0"
