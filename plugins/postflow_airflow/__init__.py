"""Airflow glue shared by postflow's DAGs: settings from connections, assets, notifiers.

Installed as a package (`pip install -e .`) and also found in Airflow's plugins folder. Keep
module-level imports to the standard library and `airflow.sdk`: DAG files import this at parse.
"""
