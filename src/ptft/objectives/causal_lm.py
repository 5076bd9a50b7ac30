"""GPT-style causal language modelling: predict every next token of a block (Radford et al. 2019).

Each validation also writes a few greedy continuations to TensorBoard, decoded with the
datamodule's tokenizer, so a run shows what the model has learnt, not only its perplexity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ptft.data.tokenizer import EOS_ID, load_tokenizer
from ptft.objectives.language_model import LanguageModel


@torch.no_grad()
def greedy_generate(model: LanguageModel, prompt: Sequence[int], num_tokens: int) -> list[int]:
    """The ``num_tokens`` most likely next tokens after ``prompt``, one at a time with the kv cache."""
    max_positions = model.backbone.max_positions
    tokens = torch.tensor([list(prompt)[-max_positions:]], device=model.device)
    features, cache = model.backbone(tokens, return_cache=True)
    generated: list[int] = []
    for _ in range(num_tokens):
        next_id = int(model.lm_head(features[:, -1]).argmax(-1))
        generated.append(next_id)
        if len(generated) == num_tokens or cache[0][0].shape[2] >= max_positions:
            break
        features, cache = model.backbone(torch.tensor([[next_id]], device=model.device), kv_cache=cache,
                                         return_cache=True)
    return generated


class CausalLM(LanguageModel):
    """Next-token cross-entropy on blocks ``x = item[:-1]``, ``y = item[1:]``; logs greedy samples."""

    causal = True

    def __init__(
        self,
        backbone: Mapping[str, Any],
        input_shape: Sequence[int],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        sample_prompts: Sequence[str] = ("Return the", "This module"),
        sample_tokens: int = 32,
    ) -> None:
        super().__init__(backbone, input_shape, optimizer, scheduler)
        self.save_hyperparameters()
        self.sample_prompts = list(sample_prompts)
        self.sample_tokens = sample_tokens

    def logits_and_labels(self, batch: Tensor, stage: str) -> tuple[Tensor, Tensor]:
        return self(batch[:, :-1]), batch[:, 1:]

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        writers = [lg.experiment for lg in self.loggers if hasattr(lg.experiment, "add_text")]
        path = self.tokenizer_path()
        if not writers or path is None or not self.sample_prompts or self.sample_tokens < 1:
            return
        tokenizer = load_tokenizer(path)
        for i, prompt in enumerate(self.sample_prompts):
            # documents follow an <eos> in the token stream, so the prompt starts a docstring
            ids = [EOS_ID, *tokenizer.encode(prompt, add_special_tokens=False).ids]
            text = prompt + tokenizer.decode(greedy_generate(self, ids, self.sample_tokens), skip_special_tokens=False)
            for writer in writers:
                writer.add_text(f"samples/{i}", text, global_step=self.global_step)
