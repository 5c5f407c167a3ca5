"""``longllava-sdk init-model``: write a fresh random-weight model + tokenizer + processor."""

from __future__ import annotations


def init_model(output: str, preset: str = "tiny", seed: int = 0, overwrite: bool = False) -> None:
    """Write a fresh random-weight model, its tokenizer and processor files to OUTPUT.

    Args:
        output: directory to create (must not exist or be empty unless --overwrite).
        preset: model preset (tiny for tests and CPU demos; 9b/a13b need a lot of memory).
        seed: random seed of the initialisation.
        overwrite: replace a non-empty output directory.
    """
    from ..model_folders import RANDOM_INIT_KEY, create_model, save_model

    model, processor = create_model(preset, seed)
    # recorded so that evaluation reports can say these are random weights (expect chance-level scores)
    path = save_model(model, processor, output, overwrite=overwrite,
                      info={RANDOM_INIT_KEY: f"{preset} preset, seed {seed}"})
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {preset} model ({n:,} parameters) to {path}")
