"""The `emlab` command line: a thin layer over the stage functions, one module per stage.

    emlab doctor | quickstart | run EXPERIMENT | report PROJECT | metrics FILE
    emlab models list | pull | info          (cli/models.py)
    emlab data list | show | stats | validate | generate | transform | suite   (cli/data.py)
    emlab train ...                           (cli/train.py; flags derived from TrainConfig)
    emlab sample ... ; emlab serve ... ; emlab export ...   (cli/sample.py)
    emlab judge run | score | train | agree | injection      (cli/judge.py)
    emlab codeeval run | scan                 (cli/codeeval.py)
    emlab probe likelihood | collect | direction | cosine | persona   (cli/probe.py)
    emlab probe steer | rank1                 (cli/mechanisms.py)
    emlab finetune openai | list | status | cancel   (cli/finetune.py)
"""

from __future__ import annotations

from emlab.cli.app import app
from emlab.cli import codeeval, data, finetune, judge, mechanisms, models, probe, run, sample, train  # noqa: F401  (registers commands)
from emlab.cli import calibrate  # noqa: E402,F401  (after judge: adds to its sub-app)

__all__ = ["app"]
