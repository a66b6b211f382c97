"""Chat templates: compiled the way HF transformers and llama-cpp-python compile them, and the templates the
project's models carry (LLaVA-1.5, which is also the runtime's fallback for LLaVA GGUFs without a template;
ChatML for Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5 and InternVL; Gemma 3; Gemma 4; Mistral's [INST] for Pixtral;
SmolVLM's User:/Assistant: turns).

The templates print list contents' text parts: llama-cpp-python and topv_edge turn an image part into a text
part holding the media marker. Rendering uses trim_blocks, which drops a newline written right after a block
tag ({% endif %}), hence {{ '\\n' }} where a newline follows one (without it the trained demo model saw
prompts it was not trained on and answered left/right questions with colours)."""

from __future__ import annotations

from ..errors import ChatError

_CONTENT = ("{% if message.content is string %}{{ message.content }}{% else %}"
            "{% for part in message.content %}{% if part.type == 'text' %}{{ part.text }}{% endif %}{% endfor %}"
            "{% endif %}")
# LLaVA-1.5's format: LLaVA-1.5 GGUFs usually carry no chat template, and this is what they were trained with
LLAVA15_TEMPLATE = ("{% for message in messages %}"
                    "{% if message.role == 'system' %}" + _CONTENT + "{{ '\\n' }}"
                    "{% elif message.role == 'user' %}USER: " + _CONTENT + "{{ '\\n' }}"
                    "{% elif message.role == 'assistant' %}ASSISTANT: " + _CONTENT + "</s>\n"
                    "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")
CHATML_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message.role }}\n" + _CONTENT + "<|im_end|>\n"
                   "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
GEMMA_TEMPLATE = ("{{ bos_token }}{% for message in messages %}<start_of_turn>"
                  "{{ 'model' if message.role == 'assistant' else message.role }}\n" + _CONTENT + "<end_of_turn>\n"
                  "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")

# Gemma 4's turn markers (<|turn>role ... <turn|>), images are wrapped by mtmd in <|image> ... <image|>
GEMMA4_TEMPLATE = ("{{ bos_token }}{% for message in messages %}<|turn>"
                   "{{ 'model' if message.role == 'assistant' else message.role }}\n" + _CONTENT + "<turn|>\n"
                   "{% endfor %}{% if add_generation_prompt %}<|turn>model\n{% endif %}")
# Mistral's [INST] format (Pixtral, Mistral Small 3.1): a system message is prepended to the first user turn
MISTRAL_TEMPLATE = ("{{ bos_token }}{% for message in messages %}"
                    "{% if message.role == 'system' %}[INST]" + _CONTENT + "{{ '\\n\\n' }}"
                    "{% elif message.role == 'user' %}{% if loop.index0 == 0 or messages[loop.index0 - 1].role != 'system' %}"
                    "[INST]{% endif %}" + _CONTENT + "[/INST]"
                    "{% elif message.role == 'assistant' %}" + _CONTENT + "</s>"
                    "{% endif %}{% endfor %}")
# SmolVLM / SmolVLM2 (Idefics3): "<|im_start|>User: ...<end_of_utterance>\nAssistant:", <|im_start|> written as
# the BOS; llama.cpp recognises it as "smolvlm" (src/llama-chat.cpp: <|im_start|> and <end_of_utterance>)
SMOLVLM_TEMPLATE = ("<|im_start|>{% for message in messages %}{{ message.role | capitalize }}: " + _CONTENT +
                    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")
# MiniCPM-V 2.6 (Qwen2's ChatML with its default system message); llama.cpp recognises it as "chatml"
MINICPMV26_TEMPLATE = ("{% for message in messages %}"
                       "{% if loop.first and messages[0].role != 'system' %}"
                       "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
                       "<|im_start|>{{ message.role }}\n" + _CONTENT + "<|im_end|>{{ '\\n' }}"
                       "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# LFM2 / LFM2-VL: the BOS (<|startoftext|>), then ChatML turns; llama.cpp recognises it as "chatml"
# (src/llama-chat.cpp: <|im_start|> without <|im_sep|> or <end_of_utterance>)
LFM2_TEMPLATE = ("{{ bos_token }}{% for message in messages %}<|im_start|>{{ message.role }}\n" + _CONTENT +
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def compile_chat_template(source: str, what: str = "the chat template"):
    """A model's Jinja chat template, compiled as HF transformers and llama-cpp-python do (sandboxed,
    trim_blocks, lstrip_blocks); render(messages=..., add_generation_prompt=..., bos_token=..., ...).
    A template's raise_exception() raises topv_edge.errors.ChatError, and so does a syntax error (`what` names
    the template in its message)."""
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str) -> None:
        raise ChatError(f"the model's chat template refused the conversation: {message}")

    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(source)
    except TemplateSyntaxError as e:
        raise ChatError(f"{what} is not a valid Jinja template: line {e.lineno}: {e.message}") from None
