"""The node agent's pure parts: vLLM's /metrics, each cloud's interruption notice, and its
command line's refusals."""

from __future__ import annotations

import pytest

from crosslogic.agent.load import LoadUnavailable, NodeLoad, parse_vllm_metrics
from crosslogic.agent.main import run
from crosslogic.agent.notices import MetadataError, Notice
from crosslogic.agent.notices.aws import parse_instance_action, parse_rebalance
from crosslogic.agent.notices.azure import parse_events
from crosslogic.agent.notices.gcp import parse_preempted

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="llama"} 3.0
vllm:num_requests_running{engine="1",model_name="llama"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="llama"} 1.0
vllm:num_requests_waiting{engine="1",model_name="llama"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="llama"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="llama"} 0.5
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="llama"} 1234.0
"""


def test_the_load_is_read_from_vllms_metrics() -> None:
    # requests summed over the engines, KV-cache use of the fullest
    assert parse_vllm_metrics(VLLM_METRICS) == NodeLoad(5, 1, 0.5)
    older = VLLM_METRICS.replace("kv_cache_usage_perc", "gpu_cache_usage_perc")
    assert parse_vllm_metrics(older).kv_cache_usage_perc == 0.5  # vLLM before 0.9
    without_kv = "\n".join(line for line in VLLM_METRICS.splitlines() if "kv_cache" not in line)
    assert parse_vllm_metrics(without_kv).kv_cache_usage_perc == 0.0


@pytest.mark.parametrize(
    "text",
    [
        "",
        VLLM_METRICS.replace("num_requests_waiting", "something_else"),
        VLLM_METRICS.replace("} 3.0", "} NaN"),
        VLLM_METRICS.replace("} 0.25", "} -1"),
        'vllm:num_requests_running{model_name="x} 1',
    ],
)
def test_metrics_without_a_readable_load_are_refused(text: str) -> None:
    with pytest.raises(LoadUnavailable):
        parse_vllm_metrics(text)


def test_aws_instance_action() -> None:
    assert parse_instance_action(404, "<html>Not Found</html>") is None
    notice = parse_instance_action(200, '{"action": "stop", "time": "2026-11-30T05:00:00Z"}')
    assert notice == Notice(source="aws", reason="spot instance stop at 2026-11-30T05:00:00Z")
    for status, body in ((500, ""), (200, "nope"), (200, '{"action": "reboot"}'), (200, "[]")):
        with pytest.raises(MetadataError):
            parse_instance_action(status, body)


def test_gcp_preempted() -> None:
    assert parse_preempted(200, "TRUE") and not parse_preempted(200, "FALSE\n")
    for status, body in ((200, "true?"), (503, "TRUE")):
        with pytest.raises(MetadataError):
            parse_preempted(status, body)


def test_azure_scheduled_events_for_this_vm_only() -> None:
    def event(kind: str, vm: str, event_id: str = "e1") -> dict[str, object]:
        return {"EventId": event_id, "EventType": kind, "Resources": [vm], "NotBefore": ""}

    assert parse_events({"DocumentIncarnation": 0, "Events": []}, instance="vm") is None
    others = [event("Freeze", "vm"), event("Reboot", "vm"), event("Preempt", "vm-2")]
    assert parse_events({"Events": others}, instance="vm") is None
    for kind in ("Preempt", "Terminate"):
        found = parse_events({"Events": [*others, event(kind, "vm", "e9")]}, instance="vm")
        assert found is not None and (found.source, found.event_id) == ("azure", "e9")
        assert found.reason.startswith(kind)
    for body in ({}, [], {"Events": None}):
        with pytest.raises(MetadataError):
            parse_events(body, instance="vm")


def test_the_command_line_refuses_bad_flags_and_the_admin_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = ["--vllm-url", "http://127.0.0.1:8000", "--admin-url", "http://127.0.0.1:8080"]
    base += ["--model", "m"]
    monkeypatch.delenv("NODE_REGISTRATION_TOKEN", raising=False)
    assert run(base) == 2  # no registration token
    monkeypatch.setenv("NODE_REGISTRATION_TOKEN", "clrt_x")
    monkeypatch.setenv("ADMIN_TOKEN", "clrt_x")
    assert run(base) == 2  # the admin token is no registration token
    monkeypatch.setenv("ADMIN_TOKEN", "something-else")
    for extra in (
        ["--cloud", "alibaba"],
        ["--poll-interval", "0"],
        ["--metadata-url", "169.254.169.254"],
        ["--cloud", "kubernetes", "--metadata-url", "http://127.0.0.1:1"],
        ["--cloud", "gcp", "--drain-on-rebalance"],
        ["--capacity", "0"],
        ["--advertise-port", "70000"],
    ):
        assert run(base + extra) == 2, extra
    assert run(["--vllm-url", "http://0.0.0.0:8000", *base[2:]]) == 2  # nowhere to route


def test_aws_rebalance_recommendation() -> None:
    assert parse_rebalance(404, "") is None
    notice = parse_rebalance(200, '{"noticeTime": "2026-11-30T04:58:00Z"}')
    assert notice is not None and notice.reason.endswith("2026-11-30T04:58:00Z")
    for status, body in ((500, ""), (200, "{}"), (200, "x")):
        with pytest.raises(MetadataError):
            parse_rebalance(status, body)
