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


#: The chat template as Jinja, saved as ``chat_template.jinja`` with every processor and used by
#: ``LongLLaVAProcessor.apply_chat_template`` (and by any tool that renders a saved folder's
#: template itself, e.g. ``tokenizer.apply_chat_template``). It renders exactly the layout of
#: ``LongLLaVAProcessor._segments`` (``tests/test_transformers_interop.py`` checks string
#: equality): an optional opening system message prefixes the first user turn; every answer but
#: the conversation's last ends with ``\n``, the last with ``<|endoftext|>`` unless a generation
#: prompt follows. A message's content is a string (rendered as it is) or a list of parts:
#: ``{"type": "image"}`` renders ``<img><image></img>``, ``{"type": "text", "text": ...}`` its
#: text. Images that open a message are its media before the text, followed by ``\n`` (the
#: layout of media attached to a message); images after text are inline. Every tag is a
#: ``{%- -%}`` block, so the output is the same whether or not the renderer trims blocks.
CHAT_TEMPLATE = r"""{#- LongLLaVA chat layout (longllava-sdk, docs/protocol.md) -#}
{%- set state = namespace(last_answer=-1, system='') -%}
{%- for message in messages -%}
    {%- if message['role'] == 'assistant' -%}{%- set state.last_answer = loop.index0 -%}{%- endif -%}
{%- endfor -%}
{%- for message in messages -%}
    {%- if message['content'] is string -%}
        {%- set content = message['content'] -%}
    {%- elif message['content'] is none -%}
        {%- set content = '' -%}
    {%- else -%}
        {%- set parts = namespace(text='', leading=true) -%}
        {%- for part in message['content'] -%}
            {%- if part['type'] == 'image' -%}
                {%- set parts.text = parts.text + '<img><image></img>' -%}
            {%- elif part['type'] == 'text' -%}
                {%- if parts.leading and parts.text -%}{%- set parts.text = parts.text + '\n' -%}{%- endif -%}
                {%- set parts.leading = false -%}
                {%- set parts.text = parts.text + part['text'] -%}
            {%- else -%}
                {{- raise_exception('unsupported content part type ' ~ part['type'] ~ ' (text or image)') -}}
            {%- endif -%}
        {%- endfor -%}
        {%- if parts.leading and parts.text -%}{%- set parts.text = parts.text + '\n' -%}{%- endif -%}
        {%- set content = parts.text -%}
    {%- endif -%}
    {%- if message['role'] == 'system' -%}
        {%- if not loop.first -%}{{- raise_exception('a system message may only open the conversation') -}}{%- endif -%}
        {%- set state.system = content ~ '\n' -%}
    {%- elif message['role'] == 'user' -%}
        {{- state.system ~ '<|startoftext|><|User|>\n' ~ content ~ '\n' -}}
        {%- set state.system = '' -%}
    {%- elif message['role'] == 'assistant' -%}
        {{- '<|startoftext|><|Assistant|>\n' ~ content -}}
        {%- if loop.index0 == state.last_answer and not add_generation_prompt -%}
            {{- '<|endoftext|>' -}}
        {%- else -%}
            {{- '\n' -}}
        {%- endif -%}
    {%- else -%}
        {{- raise_exception('unknown role ' ~ message['role'] ~ ' (user, assistant or system)') -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|startoftext|><|Assistant|>\n' -}}{%- endif -%}
"""
