"""One chat or text completion as the client receives it: the whole JSON body, or an SSE
stream paced like a GPU decoding tokens (vLLM's and OpenAI's chunk shapes)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from crosslogic.node.state import NodeState
from crosslogic.node.tokens import Generation, completion_text, token_text

_SSE_DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class Completion:
    """Builds the JSON bodies and SSE chunks of one chat or text completion."""

    id: str
    created: int
    gen: Generation
    chat: bool

    def _envelope(self, *, chunk: bool) -> dict[str, Any]:
        kind = "chat.completion" if self.chat else "text_completion"
        return {
            "id": self.id,
            "object": f"{kind}.chunk" if chunk and self.chat else kind,
            "created": self.created,
            "model": self.gen.model,
        }

    def usage(self) -> dict[str, int]:
        completion = self.gen.completion_tokens
        return {
            "prompt_tokens": self.gen.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.gen.prompt_tokens + completion,
        }

    def whole(self) -> dict[str, Any]:
        text = completion_text(self.gen.tokens_per_choice)
        choices = [
            {
                "index": i,
                **(
                    {"message": {"role": "assistant", "content": text}}
                    if self.chat
                    else {"text": text}
                ),
                "logprobs": None,
                "finish_reason": self.gen.finish_reason,
            }
            for i in range(self.gen.choices)
        ]
        return {**self._envelope(chunk=False), "choices": choices, "usage": self.usage()}

    def chunk(
        self, *, index: int, piece: str | None, finish: bool = False, role: bool = False
    ) -> bytes:
        if self.chat:
            delta: dict[str, str] = {}
            if role:
                delta["role"] = "assistant"
            if piece is not None:
                delta["content"] = piece
            choice: dict[str, Any] = {"index": index, "delta": delta}
        else:
            choice = {"index": index, "text": piece or ""}
        choice["logprobs"] = None
        choice["finish_reason"] = self.gen.finish_reason if finish else None
        body = {**self._envelope(chunk=True), "choices": [choice]}
        if self.gen.include_usage:
            # OpenAI and vLLM mark every chunk but the last usage-only one with null usage.
            body["usage"] = None
        return _sse(body)

    def usage_chunk(self) -> bytes:
        return _sse({**self._envelope(chunk=True), "choices": [], "usage": self.usage()})


def _sse(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def stream(
    request: web.Request, *, state: NodeState, completion: Completion
) -> web.StreamResponse:
    """Send ``completion`` as server-sent events; only tokens that were written are counted."""
    gen = completion.gen
    interval = state.config.token_interval_s
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    state.metrics.prompt_tokens.inc(gen.prompt_tokens)
    # Chunks are batched into one write until the next sleep: with no pacing the whole
    # stream goes out in a single write, which keeps the node cheap as a load-test upstream.
    pending: list[bytes] = []
    pending_tokens = 0
    sent = 0

    async def flush() -> None:
        nonlocal pending_tokens, sent
        await response.write(b"".join(pending))
        pending.clear()
        sent += pending_tokens  # counted only once the write went out
        pending_tokens = 0

    try:
        if state.config.ttft_s > 0:
            await asyncio.sleep(state.config.ttft_s)
        for index in range(gen.choices):
            if completion.chat:
                # Like vLLM and OpenAI, the role travels alone in an empty-content chunk.
                pending.append(completion.chunk(index=index, piece="", role=True))
            for token in range(gen.tokens_per_choice):
                if interval > 0 and sent + pending_tokens > 0:
                    await flush()
                    await asyncio.sleep(interval)
                pending.append(completion.chunk(index=index, piece=token_text(token)))
                pending_tokens += 1
            pending.append(completion.chunk(index=index, piece=None, finish=True))
        if gen.include_usage:
            pending.append(completion.usage_chunk())
        pending.append(_SSE_DONE)
        await flush()
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away; what it received is counted below
    finally:
        state.metrics.generated(sent)
    return response
