"""The pipeline's five DVC stages, run as `python -m stages.<stage>`, and the code they share.

prepare -> tokenize -> subset -> train -> evaluate, one module each; no stage imports another.
Shared: `common` (every stage), `data` (the datasets between stages), `training` (train), `metrics`
(train and evaluate). `gate` is no stage: the metric gate and the pull-request check.
"""
