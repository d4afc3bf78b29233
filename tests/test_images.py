"""Images on user messages: sent only to providers with `vision`, as OpenAI's content parts; a tier none of whose
providers reads them is skipped upwards, saying so; bad images are refused by name; the shadow never samples them.
Real routers on 127.0.0.1, the provider double as the only stand-in."""
from __future__ import annotations

import json
import socket
import time

import grpc
import pytest
from openai import OpenAI

from router_service.conversation import NoTierFits, decide_on_conversation
from router_service.providers import ProviderConfig, TierChain
from router_service.providers.provider import Provider
from router_service.strategies import Decision
from router_service.tokens import conversation_tokens
from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc

from .servers import KEY_ENV, UNUSED_CLASSIFIER, capability_config, http_address, post, running_router

PIXEL = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9aw"
         "AAAABJRU5ErkJggg==")
QUESTION = "What colour is this pixel?"


def with_image(text: str = QUESTION, url: str = PIXEL, detail: str | None = "low") -> list[dict]:
    image = {"url": url, **({"detail": detail} if detail is not None else {})}
    return [{"role": "user", "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": image}]}]


def vision_config(base_url: str, readers: set[str], **extra) -> dict:
    return capability_config(base_url, "vision", readers, **extra)



# ------------------------------------------------------------------------------------------------ the decision


def test_images_count_in_the_conversations_tokens_by_detail():
    text = [{"role": "user", "content": "x" * 40}]
    low = [{**text[0], "images": [{"url": PIXEL, "detail": "low"}]}]
    high = [{**text[0], "images": [{"url": PIXEL, "detail": ""}, {"url": PIXEL, "detail": "high"}]}]
    assert conversation_tokens(low) - conversation_tokens(text) == 85
    assert conversation_tokens(high) - conversation_tokens(text) == 2 * 765


def test_a_tier_that_cannot_read_images_is_skipped_upwards_and_none_is_refused():
    def chains(readers: set[int]) -> dict[int, TierChain]:
        return {t: TierChain([Provider(ProviderConfig(name=f"t{t}", base_url="http://127.0.0.1:9", model="m",
                                                      vision=t in readers))]) for t in (1, 2, 3)}

    plain = Decision(tier=1, strategy="heuristic", reason="score 0")
    messages = [{"role": "user", "content": QUESTION, "images": [{"url": PIXEL, "detail": "low"}]}]
    moved = decide_on_conversation(plain, messages, chains({2, 3}))
    assert moved.tier == 2 and moved.reason.endswith("skipped to tier 2: tier 1's providers cannot read images")
    assert decide_on_conversation(plain, [{"role": "user", "content": QUESTION}], chains(set())) is plain
    with pytest.raises(NoTierFits, match="messages: the request carries images; no provider of tier 1 or above"):
        decide_on_conversation(plain, messages, chains(set()))


# ---------------------------------------------------------------------------------------- through the router


@pytest.fixture(scope="module")
def api(tmp_path_factory, double):
    """t1-a reads no images; t1-b, t2-a and t3-a do. HTTP and gRPC on ephemeral ports."""
    doc = vision_config(double.base_url, {"t1-b", "t2-a", "t3-a"}, limits={"max_images": 2})
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path_factory.mktemp("images"), "--http-listen", "127.0.0.1:0",
                        env={KEY_ENV: "k"}) as router:
        yield router


def test_an_image_goes_as_content_parts_to_a_provider_that_reads_it(api, double):
    double.reset()
    client = OpenAI(base_url=f"http://{http_address(api)}/v1", api_key="unused", max_retries=0, timeout=20)
    raw = client.chat.completions.with_raw_response.create(model="tierwise/cheapest", messages=with_image())
    assert raw.headers["x-tierwise-tier"] == "1" and raw.headers["x-tierwise-provider"] == "t1-b"
    assert not double.requests_for("t1-a"), "the provider without vision is skipped, not asked"
    [sent] = [r.body for r in double.requests_for("t1-b")]
    assert sent["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": PIXEL, "detail": "low"}}]}]
    plain = client.chat.completions.with_raw_response.create(
        model="tierwise/cheapest", messages=[{"role": "user", "content": QUESTION}])
    assert plain.headers["x-tierwise-provider"] == "t1-a", "a text request is served as before"
    assert double.requests_for("t1-a")[0].body["messages"] == [{"role": "user", "content": QUESTION}]


def test_grpc_takes_images_too_and_the_attempts_say_who_was_skipped(api, double):
    double.reset()
    with grpc.insecure_channel(api.address) as channel:
        reply = router_pb2_grpc.RouterServiceStub(channel).Complete(pb.CompleteRequest(
            strategy="cheapest", messages=[pb.Message(role="user", content=QUESTION,
                                                      images=[pb.Image(url=PIXEL)])]), timeout=20)
    assert reply.provider == "t1-b"
    assert [(a.provider, a.outcome) for a in reply.attempts] == [("t1-a", "skipped_no_vision"), ("t1-b", "ok")]
    [sent] = [r.body for r in double.requests_for("t1-b")]
    assert sent["messages"][0]["content"][1] == {"type": "image_url", "image_url": {"url": PIXEL}}


@pytest.mark.parametrize("messages, param", [
    (with_image(url="ftp://example.com/x.png"), "messages[0].content[1].image_url.url"),
    (with_image(url="file:///etc/passwd"), "messages[0].content[1].image_url.url"),
    (with_image(detail="ultra"), "messages[0].content[1].image_url.detail"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": 7}}]}],
     "messages[0].content[0].image_url"),
    ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}], "messages[0].content[0]"),
    ([{"role": "system", "content": with_image()[0]["content"]}, {"role": "user", "content": "hi"}],
     "messages[0].content"),  # OpenAI's shape has no images field
    ([{"role": "user", "content": with_image()[0]["content"] + with_image()[0]["content"][1:] * 2}],
     "messages"),  # 3 images, past the fixture's limit of 2
    ([{"role": "user", "content": with_image()[0]["content"][1:]}], "messages[0].content"),  # nothing to decide on
])
def test_bad_images_are_400s_naming_the_field(api, messages, param):
    status, _, reply = post(http_address(api), json.dumps({"model": "tierwise", "messages": messages}).encode())
    assert status == 400, reply
    assert reply["error"]["param"] == param, reply


def test_a_request_no_tier_can_read_is_a_400_naming_messages(tmp_path, double):
    with running_router(vision_config(double.base_url, set()), UNUSED_CLASSIFIER, tmp_path, "--http-listen",
                        "127.0.0.1:0", env={KEY_ENV: "k"}) as router:
        body = json.dumps({"model": "tierwise", "messages": with_image()}).encode()
        status, _, reply = post(http_address(router), body)
    assert status == 400 and reply["error"]["param"] == "messages"
    assert "carries images" in reply["error"]["message"]


def test_the_shadow_never_samples_a_request_with_images(tmp_path, double):
    """The judge reads text only, so a label for an image request would grade answers it cannot check."""
    double.reset()
    labels = tmp_path / f"live-{socket.gethostname()}.jsonl"
    doc = vision_config(double.base_url, {"t1-a", "t1-b", "t2-a", "t3-a"},
                        shadow={"share": 1.0, "labels": str(tmp_path / "live-{host}.jsonl")})
    double.set_reply("t1-a", '{"score": 1.0}')
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path, "--http-listen", "127.0.0.1:0", env={KEY_ENV: "k"}) as router:
        address = http_address(router)
        for messages in (with_image(), [{"role": "user", "content": "hi there"}]):
            assert post(address, json.dumps({"model": "tierwise/cheapest", "messages": messages}).encode())[0] == 200
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (labels.exists() and labels.read_text().strip()):
            time.sleep(0.05)
        time.sleep(0.3)  # room for a second record, were the image request sampled too
    queries = [json.loads(line)["query"] for line in labels.read_text().splitlines()]
    assert queries == ["hi there"]
    asked_above = [r.body for model in ("t2-a", "t3-a") for r in double.requests_for(model)]
    assert asked_above and not any(isinstance(b["messages"][-1]["content"], list) for b in asked_above), \
        "the other tiers were asked for the text request only"
