"""What several test modules (and benchmarks/) share, so that no test module imports another.

Modules by job: `project` (the repository's paths and the skip-or-fail rule), `synthetic` (a tiny
CIFAR-10 archive), `services` (real servers on loopback), `runs` (running hpcsweep as a user does
and reading back its MLflow runs), `report_records` (hand-made RunRecords for the report tests) and
`logging_load` (the many-client load, also run as a script).
pytest puts tests/ on sys.path (conftest.py's folder, rootdir-relative), so `from helpers.x import y`
works in every test; benchmarks insert tests/ themselves.
"""
