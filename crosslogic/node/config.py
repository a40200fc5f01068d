"""What one simulated node serves."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeConfig:
    """What the node serves and how fast. Timing values of 0 mean "as fast as possible"."""

    model: str
    node_id: str
    ttft_s: float = 0.0
    tokens_per_second: float = 0.0
    max_model_len: int = 32768
    # Requests beyond this many wait, as vLLM's scheduler queues beyond max_num_seqs.
    max_num_seqs: int = 256

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must be a non-empty string")
        if self.ttft_s < 0 or self.tokens_per_second < 0:
            raise ValueError("ttft_s and tokens_per_second must not be negative")
        if self.max_model_len < 2 or self.max_num_seqs < 1:
            raise ValueError("max_model_len must be >= 2 and max_num_seqs >= 1")

    @property
    def token_interval_s(self) -> float:
        return 1.0 / self.tokens_per_second if self.tokens_per_second > 0 else 0.0
