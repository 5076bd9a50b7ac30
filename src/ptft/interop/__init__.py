"""Interop with the tools the field runs on: Hugging Face ``transformers`` (``hf``), ONNX
(``onnx``) and PEFT's LoRA adapters (``lora``). Each needs its extra; importing this package
imports none of them."""
