"""GPT-style causal language modelling: predict every next token of a block (Radford et al. 2019).

Each validation also writes a few greedy continuations (up to ``<eos>``) to TensorBoard,
decoded with the datamodule's tokenizer, so a run shows what the model has learnt, not only its
perplexity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tokenizers import Tokenizer
from torch import Tensor

from ptft.config.bounds import NonNegativeInt, check_arguments
from ptft.data.tokenizer import document_prompt, load_tokenizer, specials_of
from ptft.modules.language_model import LanguageModel
from ptft.nn.decoding import generate


class CausalLM(LanguageModel):
    """Next-token cross-entropy on blocks ``x = item[:-1]``, ``y = item[1:]``; logs greedy
    samples."""

    causal = True

    def __init__(
        self,
        backbone: Mapping[str, Any],
        input_shape: Sequence[int],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        sample_prompts: Sequence[str] = ("Return the", "This module"),
        sample_tokens: NonNegativeInt = 32,
    ) -> None:
        check_arguments(CausalLM.__init__, "model", locals())
        super().__init__(backbone, input_shape, optimizer, scheduler)
        self.save_hyperparameters()
        self.sample_prompts = list(sample_prompts)
        self.sample_tokens = sample_tokens

    def logits_and_labels(self, batch: Tensor, stage: str) -> tuple[Tensor, Tensor]:
        return self(batch[:, :-1]), batch[:, 1:]

    def prompt_ids(self, tokenizer: Tokenizer, text: str) -> list[int]:
        """The token ids that start a generation from ``text``: documents follow an ``<eos>``
        in the pretraining token stream, so the prompt opens a new document (an imported
        tokenizer's: what transformers' tokenizer gives, see
        :func:`ptft.data.tokenizer.document_prompt`)."""
        return document_prompt(specials_of(self.backbone), tokenizer, text)

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Ids that end a generation: ``<eos>`` closes the document."""
        eos = specials_of(self.backbone).eos
        return () if eos is None else (eos,)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        writers = [lg.experiment for lg in self.loggers if hasattr(lg.experiment, "add_text")]
        path = self.tokenizer_path()
        if not writers or path is None or not self.sample_prompts or self.sample_tokens < 1:
            return
        tokenizer = load_tokenizer(path)
        prompts = [self.prompt_ids(tokenizer, text) for text in self.sample_prompts]
        continuations = generate(self, prompts, self.sample_tokens, stop_ids=self.stop_ids)
        for i, (text, ids) in enumerate(zip(self.sample_prompts, continuations, strict=True)):
            sample = text + tokenizer.decode(ids, skip_special_tokens=False)
            for writer in writers:
                writer.add_text(f"samples/{i}", sample, global_step=self.global_step)
