"""``longllava-sdk infer``: answer one prompt about images / a video / a volume / a scene."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, option_hint
from ..experts import check_experts
from ..export import check_export_target, export_answer, get_exporter
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
    max_new_tokens: int | None = None,
    load: LoadOptions | None = None,
    stream: bool = True,
    export: str | None = None,
    export_path: str | None = None,
    overwrite: bool = False,
    experts: list[str] | None = None,
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
        max_new_tokens: generation length limit (default 256; a model with a task head
            answers with labels and ignores it, and says so).
        load: device, dtype and int8 quantization of the model (--device, --dtype, --quantize).
        stream: print pieces as they are generated.
        export: also write the answer with this exporter (`longllava-sdk export --help` lists them):
            dicom-sr takes the series from --volume, geojson the scene from --tiled.
        export_path: the file --export writes (required with --export).
        overwrite: replace an existing --export-path.
        experts: run only these expert plugins; their findings enter the prompt before the
            question (default: every installed expert; `longllava-sdk plugins` lists them);
            `--experts none` runs none (the released checkpoints' prompt exactly).
    """
    import json

    target = _check_export(export, export_path, overwrite, dict(volume=volume, tiled=tiled, video=video,
                                                                   images=image))
    from ..pipeline import Pipeline

    chosen = [] if experts == ["none"] else check_experts(experts)
    pipe = Pipeline.from_pretrained(model, experts=chosen, **(load or LoadOptions()).kwargs())
    media: dict[str, Any] = {k: v for k, v in dict(video=video, volume=volume, tiled=tiled, adapter=adapter,
                                                   adapter_options=adapter_options, max_images=max_images).items()
                             if v is not None}
    if pipe.head is not None:  # a fine-tuned task head answers with labels, not text
        if export is not None:
            raise ConfigError(f"{option_hint('export', export)} writes a text answer; this model answers with its "
                              "task head's labels")
        unused = ", --max-new-tokens does not apply (nothing is generated)" if max_new_tokens is not None else ""
        print(f"task head {pipe.head.name!r} answers: --prompt is the head's input prompt{unused}", file=sys.stderr)
        print(json.dumps(pipe.classify(prompt, images=image, high_res=high_res, **media), indent=2))
        return
    result = pipe(prompt, images=image, high_res=high_res, max_new_tokens=max_new_tokens or 256, stream=stream,
                  **media)
    if isinstance(result, str):
        print(result)
        answer = result
    else:
        pieces = []
        for piece in result:
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        answer = "".join(pieces)
    if target is not None:
        source, output = target
        # an exporter option named `model` names the model that answered (the SR's observer device)
        extra = {"model": model} if "model" in get_exporter(export).options else {}  # type: ignore[arg-type]
        written = export_answer(export, source, answer, output, overwrite=overwrite, **extra)  # type: ignore[arg-type]
        sys.stdout.flush()
        print(f"wrote {written.output}: {written.summary}", file=sys.stderr)


def _check_export(export: str | None, export_path: str | None, overwrite: bool,
                  sources: dict[str, Any]) -> tuple[str, str] | None:
    """``(source, output)`` for ``--export``, checked before the model loads (name, source flag, target)."""
    if export is None:
        if export_path is not None:
            raise ConfigError(f"{option_hint('export_path', export_path)} needs {option_hint('export', 'NAME')}")
        return None
    exporter = get_exporter(export)
    if export_path is None:
        raise ConfigError(f"{option_hint('export', export)} needs {option_hint('export_path', 'FILE')}")
    source = sources.get(exporter.source_kind)
    if source is None:
        raise ConfigError(f"the {export} exporter exports an answer about a {exporter.source_kind} source: give it "
                          f"with {option_hint(exporter.source_kind, 'PATH')}")
    check_export_target(exporter, export_path, overwrite=overwrite, flag="export-path")
    exporter().check_source(Path(source).absolute())
    return str(source), export_path
