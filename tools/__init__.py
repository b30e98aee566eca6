"""Developer launchers, not part of any image: `python -m tools.demo` (`make demo`) and
`python -m tools.up` (`make up`), run from the repository root, and the one recipe for a local
Airflow environment they, the tests and the benches share (`tools.airflow_env`).
"""
