"""The paper's tag protocol (§3.2): how images, video frames and sub-images are written.

Each image is one ``<image>`` placeholder (later expanded to ``tokens_per_image`` ids),
wrapped in tags that tell the model how the images relate:

* images / volume slices: ``<img><image></img>`` per image, concatenated;
* video: ``<vid>`` + frames ``<img><image></img>`` separated by ``<t>`` + ``</vid>``
  (the official code builds this with ``rstrip('<t>')``, which strips characters, not a
  suffix, and eats the ``>`` of the last ``</img>``; we render what it meant);
* high resolution / tiled: the global image, ``\\n``, then the sub-image rows from top-left
  to bottom-right, each row's sub-images concatenated and rows separated by ``\\n``.

And the released model's chat template (official ``llava/conversation.py``,
``conv_jambaInput``)::

    <|startoftext|><|User|>\\n{question}\\n<|startoftext|><|Assistant|>\\n{answer}\\n
    <|startoftext|><|User|>\\n{question}\\n<|startoftext|><|Assistant|>\\n{last answer}<|endoftext|>

(one line per turn here; nothing separates the turns). Every answer but the conversation's
last ends with ``\\n``; in training its label at that position is ``<|endoftext|>``
(``conv_jambaLabel``), so the model learns to stop there.
"""

from __future__ import annotations

from ..media import Media

IMAGE_PLACEHOLDER = "<image>"
IMAGE = "<img><image></img>"
VIDEO_START, VIDEO_END, FRAME_SEPARATOR = "<vid>", "</vid>", "<t>"

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
USER_HEADER = f"{BOS}<|User|>\n"
ASSISTANT_HEADER = f"{BOS}<|Assistant|>\n"
#: Role names a conversation may use (LLaVA's ``from: human|gpt`` and chat ``role``), normalised.
ROLE_ALIASES: dict[str, str] = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                                "system": "system"}
#: Ends every answer but a conversation's last in the *input* (labelled ``EOS``).
TURN_SEPARATOR = "\n"


def render_images(count: int) -> str:
    """``<img><image></img>`` repeated ``count`` times."""
    return IMAGE * count


def render_video(frames: int) -> str:
    """``<vid><img><image></img><t>...<img><image></img></vid>`` for ``frames`` frames."""
    return VIDEO_START + FRAME_SEPARATOR.join([IMAGE] * frames) + VIDEO_END


def render_tiled(row_lengths: list[int]) -> str:
    """Global image, then one line per sub-image row (``row_lengths[i]`` sub-images each)."""
    return IMAGE + "\n" + "\n".join(IMAGE * n for n in row_lengths)


def render_media(media: Media) -> str:
    """Protocol text for one :class:`Media`, with exactly ``len(media)`` placeholders."""
    if media.kind == "video":
        return render_video(len(media))
    if media.kind == "tiled":
        return render_tiled([len(row) for row in media.tile_rows()])
    return render_images(len(media))


def user_turn(content: str) -> str:
    return f"{USER_HEADER}{content}\n"

