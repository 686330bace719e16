"""Isaac's chat format: Qwen3's ChatML, `<image>` markers where images go.

Each message renders as `<|im_start|>{role}\\n{content}<|im_end|>\\n`; the generation prompt is
`<|im_start|>assistant\\n`, followed by an empty `<think>\\n\\n</think>\\n\\n` when `enable_thinking=False`
(as Qwen3's template does). Message content may be a string or a list of `{"type": "text", "text": ...}` /
`{"type": "image"}` items (the Isaac model card's format); IsaacProcessor flattens lists to strings with
`<image>` markers before rendering, so a checkpoint's own template (which may only handle strings) works too.
"""

from __future__ import annotations

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set content = message['content'] -%}"
    "{%- else -%}{%- set content = namespace(text='') -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{%- set content.text = content.text + '<image>' -%}"
    "{%- else -%}{%- set content.text = content.text + item['text'] -%}{%- endif -%}"
    "{%- endfor -%}{%- set content = content.text -%}{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + content + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{ '<think>\n\n</think>\n\n' }}{%- endif -%}"
    "{%- endif -%}"
)

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
ASSISTANT_HEADER = IM_START + "assistant\n"
