"""MLflow tracking of searches: where to log, runs, the front on the parent, live logging,
back-fill.

    where.py     the `tracking:` section and the destination, resolved once into the search plan
    content.py   what a run holds: the search's identity (SearchInfo), tags, metrics, params
    runs.py      the Recorder: parent and child runs found by their tags, written idempotently
    front.py     the front on the parent run: table, CSV, figure, hypervolume history, tags
    live.py      the driver's SearchTracker, the Tune callback, the Guard against failures
    backfill.py  `vlpuda sync` (MLflow filled in from the run dir) and `vlpuda export`

tracking knows MLflow and never imports vlpuda.search: the search hands it plain data
(vlpuda.search.tracked). MLflow and Ray are imported by the modules that need them, so importing
this package is cheap.
"""
