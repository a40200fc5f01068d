"""Where a model request is served, pure: region header + key's regions -> cluster name, and
the prompt-prefix hash that prefix-affinity models are balanced on.

The xDS service publishes three kinds of cluster per model (``crosslogic.contracts.routing``):

* no region asked for, none imposed by the key and no default: ``model_<id>``, every node;
* the request names a region (header ``crosslogic-region``), or else the key has a
  ``default_region``: ``model_<id>_in_<region>``, whose nodes in that region are preferred
  and the others used only when it has no healthy node;
* the key has ``allowed_regions``: ``model_<id>_only_<region>``, that region's nodes only
  (never served elsewhere: no healthy node there is a 503). The region is the one the
  request names (it must be allowed, else 403), else the key's default region (one of the
  allowed), else its first allowed region in alphabetical order: a key allowed several
  regions does not fail over between them.

A region the catalog does not know is the client's error (400), checked against the
catalog ext_authz keeps in memory: nothing here costs a query.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from crosslogic.contracts.routing import Model, preferred_cluster, strict_cluster
from crosslogic.openai_errors import ApiError, invalid_request

PREFIX_CHARS = 256  # characters of the prompt hashed for affinity: about vLLM's block or two
MAX_REGION_HEADER = 64  # a region code's longest form


def cluster_for(
    model: Model,
    *,
    requested: str | None,
    allowed: frozenset[str] | None,
    regions: frozenset[str],
    default: str | None = None,
) -> str | ApiError:
    """The cluster to route to, or the error the client gets."""
    if requested is not None:
        region = requested.strip().lower()
        if region not in regions:
            shown = region if len(region) <= MAX_REGION_HEADER else region[:MAX_REGION_HEADER]
            return invalid_request(
                f"Unknown region '{shown}' in the crosslogic-region header.",
                param="crosslogic-region",
                code="region_not_found",
            )
        if allowed is not None and region not in allowed:
            return region_not_allowed(region)
        if allowed is not None:
            return strict_cluster(model.id, region)
        return preferred_cluster(model.id, region)
    if allowed is not None:
        if default is not None and default in allowed:
            return strict_cluster(model.id, default)
        if not allowed:
            return region_not_allowed(None)
        return strict_cluster(model.id, min(allowed))
    if default is not None:
        return preferred_cluster(model.id, default)
    return model.cluster


def region_not_allowed(region: str | None) -> ApiError:
    where = f"in the region '{region}'" if region is not None else "in any region"
    return ApiError(
        403,
        f"This API key is not allowed to be served {where}.",
        "permission_denied",
        "region_not_allowed",
        "crosslogic-region",
    )


def _texts(value: object) -> Iterator[str]:
    """The prompt's strings in order: message contents (and their text parts), prompts,
    inputs. Iterative and lazy: only as much of the body is walked as the prefix needs."""
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, dict):
            stack.extend(reversed([v for k, v in item.items() if k in ("content", "text")]))


def prefix_hash(endpoint: str, payload: dict[str, object]) -> str:
    """A short hash of the first ``PREFIX_CHARS`` characters of the prompt: requests sharing
    that prefix hash alike, so Envoy's consistent hash sends them to one node (whose prefix
    cache holds it). The cost is bounded by the prefix, not by the body."""
    if endpoint == "/v1/chat/completions":
        source = payload.get("messages")
    elif endpoint == "/v1/embeddings":
        source = payload.get("input")
    else:
        source = payload.get("prompt")
    parts: list[str] = []
    size = 0
    for text in _texts(source):
        parts.append(text[: PREFIX_CHARS - size])
        size += len(parts[-1])
        if size >= PREFIX_CHARS:
            break
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).hexdigest()
