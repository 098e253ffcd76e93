"""Sweeps: a grid or an Optuna search over experiment settings, resumable, selected on the holdout.

    space.py    axes and ranges from the settings schema; one job per result to obtain
    study.py    the Optuna study: storage, the sweep's identity, the job queue (enqueued trials)
    worker.py   workers: Study.optimize, one trial at a time, resumed from the job's checkpoint
    runner.py   the request, its checks, the workers on their devices, the ranking and --final
    select.py   ranking settings over seeds and how sure the choice is (pure)
"""
