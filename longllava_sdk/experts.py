"""Expert findings in the prompt: what installed expert models say about a media source.

The pattern of MONAI's VILA-M3 expert models: a specialised model (a segmentation or
detection network, a measurement, a spectral index) looks at the same source as the
vision-language model, and its findings enter the user's turn as text **before the
question**, so the language model can use them. Each expert is a plugin implementing
``longllava_expert_findings(media)``; it is known by its plugin name (the entry-point name:
``longllava-sdk plugins`` lists it).

Who runs:

* ``experts=None`` (the default everywhere): every installed expert;
* ``experts=["name", ...]``: those only (an unknown name is an error with "did you mean");
* ``experts=[]``: none. With no expert installed, prompts are exactly the released
  checkpoints' format.

The processor (:meth:`longllava_sdk.processing.processor.LongLLaVAProcessor.render_content`)
is the one place findings are added, for every user turn with media, so ``Pipeline``, the
CLI, ``serve`` and training data all see the same prompt. An expert that raises is skipped
with a warning naming its plugin; one that answers something other than text or ``None`` too.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Iterator, Sequence

from .errors import unknown_name_error
from .plugin_manager import get_plugin_manager, warn_plugin

if TYPE_CHECKING:  # pragma: no cover
    from .media import Media

__all__ = ["HOOK", "FINDINGS_HEADER", "available_experts", "check_experts", "expert_findings", "render_findings",
           "selected_experts", "current_experts"]

HOOK = "longllava_expert_findings"
#: The line that opens the findings block in a user turn.
FINDINGS_HEADER = "Expert findings:"
#: The longest text one expert may add (characters); longer answers are cut with a warning,
#: so an expert cannot flood the context.
MAX_FINDING_CHARS = 2000


def available_experts() -> list[str]:
    """Names (plugin names) of the installed experts, in call order."""
    caller = getattr(get_plugin_manager().hook, HOOK)
    names: list[str] = []
    for impl in reversed(caller.get_hookimpls()):
        if impl.plugin_name not in names:
            names.append(impl.plugin_name)
    return names


def check_experts(experts: Sequence[str] | None) -> list[str] | None:
    """``experts`` checked against the installed ones (``None``: all of them, unchecked).

    Raises:
        RegistryLookupError: a name that is not an installed expert (the closest suggested).
    """
    if experts is None:
        return None
    if isinstance(experts, str):
        experts = [experts]
    installed = available_experts()
    for name in experts:
        if name not in installed:
            raise unknown_name_error("expert", name, installed, listing="installed experts",
                                     hint="(a plugin adds one through longllava_expert_findings)")
    return list(experts)


def expert_findings(media: Media, experts: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """``(expert name, text)`` of each selected expert that has something to say about ``media``."""
    selected = check_experts(experts)
    if selected == []:
        return []
    found = []
    for name, text in get_plugin_manager().collect(HOOK, only=selected, media=media):
        if not isinstance(text, str):
            warn_plugin(f"expert {name!r}: {HOOK} returned {type(text).__name__}, not text; skipped")
            continue
        text = " ".join(text.split())
        if not text:
            continue
        if len(text) > MAX_FINDING_CHARS:
            warn_plugin(f"expert {name!r}: findings cut to {MAX_FINDING_CHARS} characters (of {len(text)})")
            text = text[:MAX_FINDING_CHARS]
        found.append((name, text))
    return found


def render_findings(findings: Sequence[tuple[str, str]]) -> str:
    """The block added before the question: ``Expert findings:`` then ``- name: text`` per expert ("" for none)."""
    if not findings:
        return ""
    return "\n".join([FINDINGS_HEADER, *(f"- {name}: {text}" for name, text in findings)])


_SELECTED: ContextVar[tuple[str, ...] | None] = ContextVar("longllava_selected_experts", default=None)


@contextmanager
def selected_experts(experts: Sequence[str] | None) -> Iterator[None]:
    """Run only ``experts`` for prompts rendered inside this block (``None``: all installed; ``[]``: none).

    Checked on entry (an unknown name raises). A :class:`contextvars.ContextVar`, so it holds
    per thread / task: ``Pipeline(..., experts=...)``, the training collator and each ``serve``
    request set it around their rendering.
    """
    checked = check_experts(experts)
    token = _SELECTED.set(None if checked is None else tuple(checked))
    try:
        yield
    finally:
        _SELECTED.reset(token)


def current_experts() -> list[str] | None:
    """The selection of the innermost :func:`selected_experts` block (``None``: all installed)."""
    value = _SELECTED.get()
    return None if value is None else list(value)
