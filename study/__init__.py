"""The study: spec, runner (workers, claims, locks), pretraining stage, results store, report
and the trajectory analysis across its sizes; `python -m study` (run, status, report).
The top of the dependency graph: it may import every other package."""
