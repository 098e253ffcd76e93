"""Reports: figures and a self-contained HTML page for one run, several runs or sweeps.

    load.py     finding runs and sweeps in folders, and what setting each run is
    figures.py  the matplotlib figures (λ colours, a λ axis with a symbolic 0)
    page.py     the page and ``write_report``
    command.py  the ``reglab report`` flags
"""
