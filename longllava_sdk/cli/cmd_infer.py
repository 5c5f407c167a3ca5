"""``longllava-sdk infer``: answer one prompt about images / a video / a volume / a scene."""

from __future__ import annotations

import sys
from typing import Any

from ..options import LoadOptions


def infer(
    *,
    model: str,
    prompt: str,
    image: list[str] | None = None,
    video: str | None = None,
    volume: str | None = None,
    tiled: str | None = None,
    high_res: bool = False,
    adapter: str | None = None,
    adapter_options: dict[str, Any] | None = None,
    max_images: int | None = None,
    max_new_tokens: int = 256,
    load: LoadOptions | None = None,
    stream: bool = True,
) -> None:
    """Run the model on a prompt and media and print the answer (or the task head's prediction).

    Args:
        model: checkpoint directory (safetensors).
        prompt: the question.
        image: one or more image files.
        video: a video file.
        volume: a DICOM file/folder or a NIfTI file.
        tiled: a GeoTIFF scene.
        high_res: split images into 336 px sub-images after a global view.
        adapter: force an input adapter by name.
        adapter_options: an option for the input adapter, KEY=VALUE, typed by the adapter's declared
            options (see `longllava-sdk plugins --adapter NAME`), e.g. allow_non_parallel=true.
        max_images: image budget per source (default: 128 frames for a video, the paper's setting;
            what fits the context for other sources).
        max_new_tokens: generation length limit.
        load: device, dtype and int8 quantization of the model (--device, --dtype, --quantize).
        stream: print pieces as they are generated.
    """
    import json

    from ..pipeline import Pipeline

    pipe = Pipeline.from_pretrained(model, **(load or LoadOptions()).kwargs())
    media: dict[str, Any] = {k: v for k, v in dict(video=video, volume=volume, tiled=tiled, adapter=adapter,
                                                   adapter_options=adapter_options, max_images=max_images).items()
                             if v is not None}
    if pipe.head is not None:  # a fine-tuned task head answers with labels, not text
        print(json.dumps(pipe.classify(prompt, images=image, high_res=high_res, **media), indent=2))
        return
    result = pipe(prompt, images=image, high_res=high_res, max_new_tokens=max_new_tokens, stream=stream, **media)
    if isinstance(result, str):
        print(result)
        return
    for piece in result:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
