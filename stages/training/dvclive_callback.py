"""Live training metrics through DVCLive, at the `Trainer`'s own steps.

`LiveMetrics(folder)`, a `TrainerCallback`, logs only what the Trainer logs (training loss and learning rate every
`train.logging_steps`, eval loss and accuracy every epoch), each at the Trainer's `global_step`, into `folder`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scmrepo.exceptions import SCMError
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from dvclive import Live

# What the Trainer logs, under the names the plots use: train/loss, train/learning_rate, eval/loss... In the
# order a fresh run logs them, kept when a resumed run replays the history it read back (with sorted keys), so
# both write the same summary.
_LOGGED = {
    "loss": "train/loss",
    "grad_norm": "train/grad_norm",
    "learning_rate": "train/learning_rate",
    "eval_loss": "eval/loss",
    "eval_accuracy": "eval/accuracy",
}


class _Live(Live):
    """DVCLive, in a git repository with no commit yet too (dvclive 3.49 asks it for HEAD and fails)."""

    def _init_dvc(self) -> None:
        try:
            super()._init_dvc()
        except SCMError:
            self._dvc_file = self._init_dvc_file()  # what the rest of _init_dvc would have set


# Not DVCLive's stock callback: it logs every TrainingArguments field as a param and counts its own steps.
class LiveMetrics(TrainerCallback):
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.live: Live | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        # save_dvc_exp/dvcyaml off: dvc.yaml declares these files, and `dvc exp run` records the run.
        self.live = _Live(str(self.folder), resume=False, save_dvc_exp=False, dvcyaml=False, report=None)
        for logs in state.log_history:  # a resumed run: what happened before the checkpoint, so curves show it all
            self._log(logs, logs.get("step", 0), logs.get("epoch"))

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict | None = None,
        **kwargs: Any,
    ) -> None:
        if self.live is not None and logs:
            self._log(logs, state.global_step, state.epoch)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.live is not None:
            self.live.end()

    def _log(self, logs: dict[str, Any], step: int, epoch: float | None) -> None:
        values = {logged: float(logs[name]) for name, logged in _LOGGED.items() if name in logs}
        if not values:
            return
        self.live.step = step
        for name, value in values.items():
            self.live.log_metric(name, value)
        if epoch is not None:
            self.live.log_metric("epoch", round(float(epoch), 4), plot=False)
        # For `dvc exp show` on a running experiment; the gate compares evaluate's metrics.json.
        self.live.make_summary()
