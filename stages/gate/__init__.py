"""No stage: the metric gate, the pull-request check and the multi-seed summary, which judge a run against its base.

`python -m stages.gate` (`compare.py`), `python -m stages.gate.pr_check` or `make pr-check` (`pr_check.py`),
`python -m stages.gate.seeds` (`seeds.py`).
"""
