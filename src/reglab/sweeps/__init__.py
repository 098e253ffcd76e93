"""Sweeps: a grid or an Optuna search over train settings, resumable, selected on the holdout.

    space.py    axes and ranges parsed like the train flags; one job per trial
    study.py    the Optuna study: storage, claims, heartbeats, dead workers, re-enqueueing
    runner.py   workers, the live view, the ranking and --final
    select.py   ranking settings over seeds and how sure the choice is (pure)
    command.py  the ``reglab sweep`` flags
"""
