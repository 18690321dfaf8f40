"""The frozen models: what is known before any weights exist (`specs`: depth, width, grid, read
from each model's own config), their weights' identity and staging (`weights`), their forward
to per-layer tokens (`backbones`), the tiny stand-ins the demo and tests build (`tiny`), the
layer names (`layers`) and the prompts LLaVA is conditioned on (`prompts`)."""
