"""How a LongLLaVA model folder meets transformers' Auto classes.

LongLLaVA is an architecture outside transformers. Two ways load a saved folder with the
Auto classes (``AutoConfig``, ``AutoModel``, ``AutoModelForCausalLM``,
``AutoModelForImageTextToText``, ``AutoProcessor``):

* ``import longllava_sdk`` (which registers as soon as transformers is imported too, in either
  order) or ``longllava_sdk.register_auto_classes()``: the SDK's classes register themselves
  (:func:`register_auto_class`, called by each class's module when it is imported), no
  remote code involved;
* ``trust_remote_code=True`` without the import: every folder the SDK writes carries an
  ``auto_map`` (in ``config.json``, ``processor_config.json``, ``preprocessor_config.json`` and
  ``tokenizer_config.json``) pointing at three small module files (:data:`SHIM_FILES`) that
  hold no model code: each imports one class of the *installed* ``longllava_sdk`` package.

Without either, transformers refuses the folder with its own message ("contains custom code
which must be executed ... pass the argument ``trust_remote_code=True``"); the folder's
``README.md`` (:func:`write_auto_files`) opens with ``import longllava_sdk`` for the user who
follows that message to the folder. ``AutoProcessor`` never falls back to a bare tokenizer:
the processor configs name the processor class and carry the ``auto_map``.

Only transformers' public Auto-class API is used (``register``, ``auto_map``); the folder's
module files are plain Python that transformers imports through its dynamic-module loader.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["AUTO_MAP", "PROCESSOR_AUTO_MAP", "SHIM_FILES", "MODEL_CARD", "register_auto_class", "write_auto_files",
           "add_processor_auto_map"]

MODEL_TYPE = "longllava"

#: module file in the folder -> (class name, where the installed SDK defines it)
_SHIMS: dict[str, tuple[str, str]] = {
    "configuration_longllava.py": ("LongLLaVAConfig", "longllava_sdk.config"),
    "modeling_longllava.py": ("LongLLaVAForConditionalGeneration", "longllava_sdk.modeling.modeling_longllava"),
    "processing_longllava.py": ("LongLLaVAProcessor", "longllava_sdk.processing.processor"),
}
SHIM_FILES = tuple(_SHIMS)

_MODEL_REF = "modeling_longllava.LongLLaVAForConditionalGeneration"
#: the ``auto_map`` written into ``config.json``: Auto class -> ``module_file.ClassName``
AUTO_MAP: dict[str, str] = {
    "AutoConfig": "configuration_longllava.LongLLaVAConfig",
    "AutoModel": _MODEL_REF,
    "AutoModelForCausalLM": _MODEL_REF,
    "AutoModelForImageTextToText": _MODEL_REF,
    "AutoProcessor": "processing_longllava.LongLLaVAProcessor",
}
#: the ``auto_map`` of the processor-side configs (``AutoProcessor`` reads any of them)
PROCESSOR_AUTO_MAP: dict[str, str] = {"AutoProcessor": AUTO_MAP["AutoProcessor"]}

_SHIM_TEMPLATE = '''"""{name} for transformers' Auto classes (``trust_remote_code=True``), written by longllava-sdk.

This file holds no model code: it imports the installed longllava-sdk package, so remote code
here means that package and nothing else. ``import longllava_sdk`` before calling the Auto
classes does the same without ``trust_remote_code``.
"""

from {module} import {name}  # noqa: F401
'''

#: first lines of the ``README.md`` written into every model folder
MODEL_CARD = """`import longllava_sdk` (in any order with transformers) before loading this folder with transformers' Auto classes, or pass `trust_remote_code=True`.

# LongLLaVA model folder

This folder was written by [longllava-sdk](https://pypi.org/project/longllava-sdk/) (model type
`longllava`, an architecture that is not part of transformers). Load it with:

```python
from longllava_sdk import Pipeline

pipe = Pipeline.from_pretrained("path/to/this/folder")
```

or with transformers' Auto classes:

```python
from transformers import AutoModelForImageTextToText, AutoProcessor

import longllava_sdk  # noqa: F401  (LongLLaVA in AutoConfig / AutoModel* / AutoProcessor, any import order)

model = AutoModelForImageTextToText.from_pretrained("path/to/this/folder")
processor = AutoProcessor.from_pretrained("path/to/this/folder")
```

Without `import longllava_sdk`, transformers says the folder "contains custom code which must be
executed": that code is the three files `configuration_longllava.py`, `modeling_longllava.py` and
`processing_longllava.py`, each one import line of the installed `longllava_sdk` package (read
them); `trust_remote_code=True` runs exactly that.
"""


def register_auto_class(cls: type, config_class: type | None = None) -> None:
    """Register one SDK class with the Auto classes its kind belongs to.

    Called once by the module that defines each class, when it is imported: the config with
    ``AutoConfig`` (model type ``longllava``), the model with ``AutoModel``,
    ``AutoModelForCausalLM`` and ``AutoModelForImageTextToText``, the processor with
    ``AutoProcessor`` (under ``config_class``). ``exist_ok``: a folder loaded with ``trust_remote_code=True`` registers
    the same classes again through transformers.
    """
    from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText,
                              AutoProcessor, PretrainedConfig, PreTrainedModel, ProcessorMixin)

    if issubclass(cls, PretrainedConfig):
        AutoConfig.register(MODEL_TYPE, cls, exist_ok=True)
    elif issubclass(cls, PreTrainedModel):
        for auto in (AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText):
            auto.register(cls.config_class, cls, exist_ok=True)
    elif issubclass(cls, ProcessorMixin) and config_class is not None:
        AutoProcessor.register(config_class, cls, exist_ok=True)
    else:
        raise TypeError(f"{cls.__name__} is not a config, model or processor (with its config_class) class")


def write_auto_files(directory: str | os.PathLike[str], *, model_card: bool = False) -> list[Path]:
    """Write the Auto-class module files (and, for a model folder, ``README.md``) into ``directory``.

    Args:
        model_card: also write ``README.md`` (:data:`MODEL_CARD`) unless the folder has one
            that longllava-sdk did not write (a user's or peft's card is kept).

    Returns:
        the files written.
    """
    directory = Path(directory)
    written = []
    for filename, (name, module) in _SHIMS.items():
        path = directory / filename
        path.write_text(_SHIM_TEMPLATE.format(name=name, module=module))
        written.append(path)
    card = directory / "README.md"
    if model_card and (not card.exists() or card.read_text(errors="replace").startswith(MODEL_CARD.splitlines()[0])):
        card.write_text(MODEL_CARD)
        written.append(card)
    return written


def add_processor_auto_map(path: str | os.PathLike[str], processor_class: str) -> None:
    """Add ``processor_class`` and the ``AutoProcessor`` entry of ``auto_map`` to a saved JSON config.

    ``AutoProcessor`` reads these keys from ``preprocessor_config.json`` and
    ``tokenizer_config.json`` too; without them a fresh process that lacks the SDK's
    registration would fall back to a bare tokenizer.
    """
    path = Path(path)
    data: dict[str, Any] = json.loads(path.read_text())
    data["processor_class"] = processor_class
    data["auto_map"] = {**(data.get("auto_map") or {}), **PROCESSOR_AUTO_MAP}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
