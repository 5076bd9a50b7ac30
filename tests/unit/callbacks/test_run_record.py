"""The run record copies the data's tokenizer into the run directory, with the roles of an
imported tokenizer (tokenizer_config.json, special_tokens_map.json) beside it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ptft.callbacks.run_record import RunRecord

FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def fit_start(tokenizer_path, run_dir) -> None:
    data = SimpleNamespace(tokenizer_path=tokenizer_path, manifest={})
    trainer = SimpleNamespace(is_global_zero=True, datamodule=data)
    RunRecord({}, run_dir).on_fit_start(trainer, None)


@pytest.mark.parametrize("imported", [True, False])
def test_the_roles_of_an_imported_tokenizer_are_copied_with_it(tmp_path, imported):
    source = tmp_path / "data"
    source.mkdir()
    names = FILES if imported else FILES[:1]
    for name in names:
        (source / name).write_text(f'{{"file": "{name}"}}')
    run = tmp_path / "run"
    fit_start(source / "tokenizer.json", run)
    assert sorted(p.name for p in run.iterdir()) == sorted(names)
    for name in names:
        assert (run / name).read_text() == f'{{"file": "{name}"}}'
