"""``ptft-pipeline``: the label-efficiency study, pretrain → fine-tune, in one process.

A study (the ``pipeline`` group: ``conf/pipeline/vision.yaml``, the default, and
``text.yaml``) pretrains once per arm (``pretrain.arms.<name>``: an objective), then runs
every task under ``tasks.<name>`` with its own methods, label fractions, seeds and metrics,
each pretrained method from each arm:

    ptft-pipeline                                  # SimCLR and an autoencoder on digits
    ptft-pipeline tasks.digits.label_fractions=[0.1] tasks.digits.seeds=1    # a quick look
    ptft-pipeline pretrain.arms.simclr.pretrained=outputs/pipeline/runs/<ts>/pretrain/simclr
    ptft-pipeline pipeline=text                    # a GPT and a BERT on docstrings; two tasks
    ptft-pipeline pipeline=text '~pretrain.arms.bert'   # the GPT alone
    ptft-pipeline pretrain.arms=null 'pretrain.overrides=["experiment=digits_simclr"]'   # one arm

Overrides inside a list hold ``=``, so they are quoted. A key a task lacks takes ``+``
(``+tasks.names.method_overrides.scratch=[…]``).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ptft import config
from ptft.cli import config_dir, one_line_errors, validated

config.register()


@validated("pipeline", check="ptft.study.runner.check")
@hydra.main(version_base="1.3", config_path=config_dir(), config_name="pipeline")
@one_line_errors
def main(cfg: DictConfig) -> float:
    """Returns, for sweepers, the validation counterpart of the first task's headline metric
    (``val/acc`` for ``test/acc``; mean over seeds) of the pretrained method best on it at that
    task's smallest label fraction: never a test metric, so a sweep never selects on test."""
    from ptft.runs.console import quiet_libraries
    from ptft.study.runner import run_study  # torch and Lightning load only when a run starts

    quiet_libraries()

    return run_study(cfg)


if __name__ == "__main__":
    main()
