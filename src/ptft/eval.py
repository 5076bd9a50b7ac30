"""``ptft-eval ckpt_path=FILE``: test a checkpoint on its test split, write ``metrics.json``.

The model and data configs come from the checkpoint itself (``data=…`` overrides the
data), so no other argument is needed. Classifiers also get ``predictions.csv``, per-class
metrics and a confusion matrix (``confusion_matrix.png``; a TensorBoard figure with
``logger=tensorboard``); see :mod:`ptft.evaluation.report`.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ptft import config
from ptft.cli import config_dir, one_line_errors, validated

config.register()


@validated("eval")
@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
@one_line_errors
def main(cfg: DictConfig) -> dict[str, float]:
    from ptft.evaluation.report import evaluate  # torch and Lightning load only when a run starts
    from ptft.runs.console import quiet_libraries

    quiet_libraries()

    return evaluate(cfg)


if __name__ == "__main__":
    main()
