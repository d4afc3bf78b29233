"""TLS, mTLS and API keys against real servers on 127.0.0.1, with certificates made in the test (no network)."""
from __future__ import annotations

import signal
import socket
import ssl
import time

import grpc
import pytest
import yaml
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from router_service.auth import ApiKeys, KeysFileError, bearer, parse_keys
from router_service.limits import Limits
from tierwise.client import ClientOptions, RouterClient
from tierwise.tls import ClientTLS, ServerTLS
from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc

from .certs import authority, issue, write_ca
from .otlp_receiver import OtlpReceiver, attributes
from .provider_double import ProviderDouble
from .servers import KEY_ENV, UNUSED_CLASSIFIER, router_config, running_router, start, start_classifier

# Keys that must never show up in a log line or a span.
KEY = "tw-main-3f9c2a7d41b85e60"
LATE_KEY = "tw-late-8e1d0b6c92a47f35"
RATED_KEY = "tw-rated-51a7c3e9d2f80b64"
SPENDING_KEY = "tw-spend-c04f9b2e7a1d6853"
JUDGED_KEY = "tw-judged-7b2e90d4c1a6f358"
SPENT_KEY = "tw-spent-9d4a2c7e16b05f83"
SECRETS = (KEY, LATE_KEY, RATED_KEY, SPENDING_KEY, JUDGED_KEY, SPENT_KEY)


def keys_file(path, *lines: str):
    path.write_text("# test keys\n\n" + "\n".join(lines) + "\n")
    return path


def listening_line(router) -> str:
    return next(line for line in router.output if " listening on " in line)


def health_address(router) -> str:
    return listening_line(router).split("plaintext health on ")[1].split(";")[0]


# ------------------------------------------------------------------------------------------------- a secured router


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    ca = authority()
    cert, key = issue(ca, "router").write(root, "router")
    return {"ca": ca, "ca_path": write_ca(ca, root / "ca.crt"), "cert": cert, "key": key, "dir": root}


@pytest.fixture(scope="module")
def secured(tmp_path_factory, pki):
    """A router serving TLS only, requiring API keys (reloaded on SIGHUP only: reload_s is an hour), with a plaintext
    health port, exporting spans to a real OTLP receiver and answering from the provider double."""
    workdir = tmp_path_factory.mktemp("secured")
    keys = keys_file(workdir / "keys", f"{KEY} id=main", f"{RATED_KEY} id=rated rpm=2",
                     f"{SPENDING_KEY} id=spender monthly_usd=0.000001", f"{JUDGED_KEY} id=judged monthly_usd=0.000001",
                     f"{SPENT_KEY} id=spent monthly_usd=0.000001")
    with OtlpReceiver() as receiver, ProviderDouble() as double:
        env = {KEY_ENV: "k", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
        doc = router_config(double.base_url, strategy="heuristic", auth={"reload_s": 3600})
        with running_router(doc, UNUSED_CLASSIFIER, workdir, "--tls-cert", str(pki["cert"]), "--tls-key",
                            str(pki["key"]), "--api-keys-file", str(keys), "--health-listen", "127.0.0.1:0",
                            env=env) as router:
            yield {"router": router, "keys": keys, "receiver": receiver, "double": double}


def client(secured, pki, key: str | None) -> RouterClient:
    return RouterClient(secured["router"].address, ClientOptions(
        timeout_s=10, retries=0, api_key=key, tls=True, root_certificates=pki["ca_path"].read_bytes()))


def secure_stub(secured, pki):
    channel = grpc.secure_channel(secured["router"].address, grpc.ssl_channel_credentials(pki["ca_path"].read_bytes()))
    return channel, router_pb2_grpc.RouterServiceStub(channel)


def test_the_router_says_it_serves_tls(secured):
    line = listening_line(secured["router"])
    assert "(tls, plaintext health on 127.0.0.1:" in line, line


def test_the_right_key_is_served_over_tls(secured, pki):
    with client(secured, pki, KEY) as tw:
        assert tw.route("What is 2 + 2?").strategy == "heuristic"
        assert tw.complete("Say hi").content


@pytest.mark.parametrize("metadata", [
    (),
    (("authorization", "Bearer tw-wrong-key-000000000000"),),
    (("authorization", f"Bearer {KEY}x"),),
    (("authorization", f"Basic {KEY}"),),
    (("authorization", "Bearer"),),
    (("authorization", "garbage!"),),
    (("x-api-key", KEY),),
])
def test_no_key_a_wrong_key_or_garbage_is_unauthenticated(secured, pki, metadata):
    channel, stub = secure_stub(secured, pki)
    with channel:
        for call in (lambda: stub.Route(pb.RouteRequest(query="hi"), metadata=metadata, timeout=5),
                     lambda: list(stub.CompleteStream(pb.CompleteRequest(messages=[pb.Message(role="user", content="hi")]),
                                                      metadata=metadata, timeout=5))):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value.details()
            assert "authorization: Bearer" in err.value.details()


def test_a_plaintext_client_is_refused(secured):
    with grpc.insecure_channel(secured["router"].address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            router_pb2_grpc.RouterServiceStub(channel).Route(pb.RouteRequest(query="hi"), timeout=3,
                                                             metadata=(("authorization", f"Bearer {KEY}"),))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_health_and_reflection_stay_open_without_a_key(secured, pki):
    channel, _ = secure_stub(secured, pki)
    with channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="tierwise.v1.RouterService"), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        answers = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        services = {s.name for answer in answers for s in answer.list_services_response.service}
        assert "tierwise.v1.RouterService" in services
    # The plaintext health port serves health alone, for probes that cannot speak TLS.
    with grpc.insecure_channel(health_address(secured["router"])) as plain:
        assert health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            router_pb2_grpc.RouterServiceStub(plain).Route(pb.RouteRequest(query="hi"), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_key_added_to_the_file_works_after_sighup_without_restart(secured, pki):
    with client(secured, pki, LATE_KEY) as tw:
        with pytest.raises(grpc.RpcError) as err:
            tw.route("hi")
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        keys_file(secured["keys"], f"{KEY} id=main", f"{RATED_KEY} id=rated rpm=2",
                  f"{SPENDING_KEY} id=spender monthly_usd=0.000001", f"{JUDGED_KEY} id=judged monthly_usd=0.000001",
                  f"{SPENT_KEY} id=spent monthly_usd=0.000001", f"{LATE_KEY} id=late")
        secured["router"].proc.send_signal(signal.SIGHUP)
        secured["router"].wait_for("API keys reloaded", timeout=10)
        assert tw.route("hi").tier in (1, 2, 3)


def test_a_key_over_its_rate_limit_gets_resource_exhausted_with_retry_after(secured, pki):
    channel, stub = secure_stub(secured, pki)
    metadata = (("authorization", f"Bearer {RATED_KEY}"),)
    with channel:
        for _ in range(2):
            stub.Route(pb.RouteRequest(query="hi"), metadata=metadata, timeout=5)
        with pytest.raises(grpc.RpcError) as err:
            stub.Route(pb.RouteRequest(query="hi"), metadata=metadata, timeout=5)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry_after = int(dict(err.value.trailing_metadata())["retry-after"])
    assert 1 <= retry_after <= 30
    details = err.value.details()
    assert "rated" in details and "2 requests a minute" in details and f"retry after {retry_after} s" in details


def test_a_key_over_its_monthly_spend_gets_resource_exhausted_until_next_month(secured, pki):
    with client(secured, pki, SPENDING_KEY) as tw:
        assert tw.route("Route is free").tier  # only answers are charged
        assert tw.complete("Say hi").cost_usd > 0.000001
        with pytest.raises(grpc.RpcError) as err:
            tw.complete("Say hi again")
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry_after = int(dict(err.value.trailing_metadata())["retry-after"])
    assert 0 < retry_after <= 31 * 86400
    assert "monthly spend limit" in err.value.details() and "spender" in err.value.details()
    assert "-01T00:00:00Z" in err.value.details(), "says when the month turns"


def test_a_route_the_judge_decides_is_charged_for_the_judges_call(secured, pki):
    with client(secured, pki, JUDGED_KEY) as tw:
        assert tw.route("Route decided by a model", strategy="judge").tier  # the double's reply is no verdict
        with pytest.raises(grpc.RpcError) as err:
            tw.route("Route decided by a model", strategy="judge")
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "judged" in err.value.details()


def test_a_key_past_its_monthly_spend_may_route_unless_a_model_decides(secured, pki):
    """Route pays no provider, so spending nothing more it is not refused; a judge's decision is a paid call, so it
    is refused as Complete is, before the judge is asked."""
    double = secured["double"]
    with client(secured, pki, SPENT_KEY) as tw:
        assert tw.complete("Say hi").cost_usd > 0.000001
        with pytest.raises(grpc.RpcError) as err:
            tw.complete("Say hi again")
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        asked = len(double.requests)
        assert tw.route("Still free to route").strategy == "heuristic"  # the router's strategy
        for strategy in ("tier2", "heuristic+cascade"):
            assert tw.route("Still free to route", strategy=strategy).strategy == strategy
        for strategy in ("judge", "judge+cascade"):
            with pytest.raises(grpc.RpcError) as err:
                tw.route("Decided by a paid model", strategy=strategy)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, strategy
            assert "monthly spend limit" in err.value.details() and "spent" in err.value.details()
            assert int(dict(err.value.trailing_metadata())["retry-after"]) > 0
        assert len(double.requests) == asked, "no provider was asked, nor paid"


def test_key_ids_reach_spans_and_logs_and_keys_never_do(secured, pki):
    with client(secured, pki, KEY) as tw:
        tw.route("span check")
    receiver = secured["receiver"]
    found = receiver.wait_for_spans(lambda r, s: s.name.endswith("/Route")
                                    and attributes(s).get("tierwise.key_id") == "main")
    assert found, "no Route span carries tierwise.key_id=main"
    for _, span in receiver.spans():
        for value in attributes(span).values():
            assert not any(secret in str(value) for secret in SECRETS), (span.name, value)
    output = "".join(secured["router"].output)
    assert '"key_id": "rated"' in output and "API keys reloaded" in output
    for secret in SECRETS:
        assert secret not in output


# ------------------------------------------------------------------------------------------------- certificate reload


def served_serial(address: str, ca_path) -> int:
    """The serial number of the certificate a new TLS connection to `address` is shown."""
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca_path))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def test_a_replaced_certificate_is_served_to_new_connections_without_restart(tmp_path):
    ca = authority()
    ca_path = write_ca(ca, tmp_path / "ca.crt")
    first = issue(ca, "router")
    cert, key = first.write(tmp_path, "router")
    with running_router(router_config("http://127.0.0.1:9", strategy="heuristic"), UNUSED_CLASSIFIER, tmp_path,
                        "--tls-cert", str(cert), "--tls-key", str(key)) as router:
        options = ClientOptions(timeout_s=10, retries=0, tls=True, root_certificates=ca_path.read_bytes())
        assert served_serial(router.address, ca_path) == first.serial
        second = issue(ca, "router")
        second.write(tmp_path, "router")
        assert served_serial(router.address, ca_path) == second.serial
        with RouterClient(router.address, options) as tw:
            assert tw.route("hi").strategy == "heuristic"
        # A key that does not fit the certificate is refused; the last good pair keeps serving.
        cert.write_bytes(issue(ca, "router").cert_pem)
        assert served_serial(router.address, ca_path) == second.serial
        router.wait_for("TLS certificate not reloaded", timeout=10)
    assert "TLS certificate reloaded" in "".join(router.output)


# ------------------------------------------------------------------------------------------------- mTLS to the classifier


def test_mtls_between_router_and_classifier(tmp_path):
    server_ca, client_ca = authority("classifier CA"), authority("router clients CA")
    cert, key = issue(server_ca, "classifier").write(tmp_path, "classifier")
    router_cert, router_key = issue(client_ca, "router", client=True).write(tmp_path, "router-client")
    stranger_cert, stranger_key = issue(authority("another CA"), "router", client=True).write(tmp_path, "stranger")
    server_ca_path = write_ca(server_ca, tmp_path / "classifier-ca.crt")
    classifier = start_classifier("--tls-cert", str(cert), "--tls-key", str(key),
                                  "--tls-client-ca", str(write_ca(client_ca, tmp_path / "clients-ca.crt")))
    doc = router_config("http://127.0.0.1:9", strategy="embedding", classifier={"timeout_ms": 5000})
    try:
        assert "(mtls;" in listening_line(classifier)
        with running_router(doc, classifier.address, tmp_path, "--classifier-tls-ca", str(server_ca_path),
                            "--classifier-tls-cert", str(router_cert), "--classifier-tls-key",
                            str(router_key)) as router, RouterClient(router.address) as tw:
            reply = tw.route("Prove that sqrt(2) is irrational.")
            assert reply.strategy == "embedding" and not reply.degraded, reply.reason
            assert len(reply.probabilities) == 3
        assert sum("no API keys file" in line for line in router.output) == 1, "one warning at start-up"
        for args in ((), ("--classifier-tls-cert", str(stranger_cert), "--classifier-tls-key", str(stranger_key))):
            with running_router(doc, classifier.address, tmp_path, "--classifier-tls-ca", str(server_ca_path),
                                *args) as router, RouterClient(router.address) as tw:
                reply = tw.route("Prove that sqrt(2) is irrational.")
                assert reply.degraded and "classifier unavailable" in reply.reason, reply.reason
    finally:
        assert classifier.stop() == 0, "".join(classifier.output)


# ------------------------------------------------------------------------------------------------- units


def test_keys_file_format(tmp_path):
    text = (f"# a comment\n\n  {KEY}   id=main rpm=60  # trailing comment\n"
            f"SHA256:{'ab' * 32} monthly_usd=2.5 max_tier=2 quality_target=0.9\n{LATE_KEY}\n")
    keys = parse_keys(text, "keys", rpm=10, monthly_usd=0.0)
    assert [(k.id, k.rpm, k.monthly_usd, k.max_tier, k.quality_target) for k in keys] == [
        ("main", 60, 0.0, 3, None), ("abababab", 10, 2.5, 2, 0.9), (keys[2].digest.hex()[:8], 10, 0.0, 3, None)]
    path = tmp_path / "keys"
    path.write_text(text)
    store = ApiKeys(path)
    assert store.find(KEY).id == "main" and store.find(LATE_KEY) is not None
    assert store.find("not-a-key") is None and store.find(KEY[:-1]) is None
    # A change to the file is seen by the next poll; a broken file leaves the keys as they were.
    path.write_text(f"{LATE_KEY} id=late\n")
    assert store.poll() and store.find(KEY) is None and store.find(LATE_KEY).id == "late"
    assert not store.poll()
    path.write_text(f"{KEY} rpm=lots\n")
    assert not store.poll() and store.find(LATE_KEY).id == "late"
    for broken in (f"{KEY} rpm=\u00b2\n".encode(), b"\xff\xfe\n"):  # a digit int() refuses; not UTF-8
        path.write_bytes(broken)
        assert not store.poll() and store.find(LATE_KEY).id == "late"
    path.write_text(f"\ufeff# keys, saved with a byte order mark\n{KEY} id=main\n")
    assert store.poll() and store.find(KEY).id == "main" and store.find(LATE_KEY) is None, "a revocation still lands"
    for emptied in ("", "# being rewritten\n"):  # a file rewritten in place, caught part-way
        path.write_text(emptied)
        assert not store.poll() and store.find(KEY).id == "main", "no key at all is a file part-way, not a revocation"
    path.write_text(f"{LATE_KEY} id=late\n")
    assert store.poll() and store.find(KEY) is None and store.find(LATE_KEY).id == "late"


def test_a_reload_check_that_fails_keeps_the_loop_and_its_sighup_handler():
    import asyncio
    import os
    import signal

    from tierwise.watching import every_or_sighup

    async def scenario() -> list[str]:
        seen: list[str] = []

        async def check() -> None:
            seen.append("check")
            if len(seen) == 1:
                raise ValueError("a file no parser foresaw")

        loop = asyncio.create_task(every_or_sighup(None, check))
        await asyncio.sleep(0.05)
        for sent in (1, 2):
            os.kill(os.getpid(), signal.SIGHUP)  # the default action would end the test process
            for _ in range(200):
                if len(seen) == sent:
                    break
                await asyncio.sleep(0.01)
        loop.cancel()
        return seen

    assert asyncio.run(scenario()) == ["check", "check"]


@pytest.mark.parametrize("text, error", [
    (f"{KEY} {LATE_KEY}\n", "keys:1: word 2 is not one of"),
    (f"{KEY}\n{KEY} id=again\n", "keys:2: the same key"),
    (f"{KEY} id=a\n{LATE_KEY} id=a\n", "keys:2: the same id"),
    (f"{KEY} id=no/slashes\n", "keys:1: id must be"),
    (f"{KEY} rpm=-1\n", "keys:1: rpm: must be a whole number"),
    (f"{KEY} rpm={'9' * 400}\n", "keys:1: rpm: must be a whole number of requests a minute up to 1000000000"),
    (f"{KEY} rpm=\u00b2\n", "keys:1: rpm: must be a whole number"),
    ("sha256:abc id=short\n", "keys:1: a key given as sha256: must be 64 hex digits"),
    (f"{KEY} monthly_usd=nan\n", "keys:1: monthly_usd: must be an amount"),
    (f"{KEY} max_tier=4\n", "keys:1: max_tier: must be 1, 2 or 3"),
    (f"{KEY} max_tier=\n", "keys:1: max_tier: must be 1, 2 or 3"),
    (f"{KEY} quality_target=1.2\n", "keys:1: quality_target: must be a quality vs frontier above 0"),
    (f"{KEY} quality_target=high\n", "keys:1: quality_target: must be a quality vs frontier above 0"),
])
def test_keys_file_errors_name_the_line_and_never_the_key(text, error):
    with pytest.raises(KeysFileError) as err:
        parse_keys(text, "keys")
    assert str(err.value).startswith(error), str(err.value)
    assert KEY not in str(err.value) and LATE_KEY not in str(err.value)


def test_bearer_reads_only_a_bearer_authorization():
    assert bearer((("authorization", "Bearer abc"),)) == "abc"
    assert bearer((("authorization", "bearer  abc "),)) == "abc"
    for metadata in ((), (("authorization", "Basic abc"),), (("authorization", b"Bearer abc"),),
                     (("other", "Bearer abc"),), None):
        assert bearer(metadata) == ""


def test_rate_limit_refills_a_minutes_worth_evenly():
    now = [0.0]
    limits = Limits(clock=lambda: now[0], wall=lambda: 1_700_000_000.0)
    assert limits.admit("k", 3, 0) is None and limits.admit("k", 3, 0) is None and limits.admit("k", 3, 0) is None
    refusal = limits.admit("k", 3, 0)
    assert refusal.kind == "rate_limited" and refusal.retry_after_s == 20
    now[0] = 20.0
    assert limits.admit("k", 3, 0) is None and limits.admit("k", 3, 0) is not None
    assert limits.admit("other", 3, 0) is None and limits.admit("k", 0, 0) is None


def test_a_lower_rpm_is_no_fresh_bucket_and_a_refund_gives_one_back():
    clock = [0.0]
    limits = Limits(clock=lambda: clock[0])
    assert all(limits.admit("k", 100, 0.0) is None for _ in range(98))
    assert [limits.admit("k", 5, 0.0) is None for _ in range(3)] == [True, True, False], \
        "two left of a hundred: a new limit of 5 does not refill it"
    limits.refund("k", 5)
    assert limits.admit("k", 5, 0.0) is None and limits.admit("k", 5, 0.0) is not None


def test_monthly_spend_resets_when_the_month_turns():
    wall = [1_706_745_599.0]  # 2024-01-31T23:59:59Z
    limits = Limits(wall=lambda: wall[0])
    limits.charge("k", 2.0)
    refusal = limits.admit("k", 0, 2.0)
    assert refusal.kind == "spend_limited" and refusal.retry_after_s == 1 and "2024-02-01T00:00:00Z" in refusal.message
    assert limits.admit("k", 0, 2.5) is None
    wall[0] += 1
    assert limits.spent("k") == 0.0 and limits.admit("k", 0, 2.0) is None


def test_tls_settings_must_be_complete():
    assert ServerTLS.from_settings(None, "", None) is None and ClientTLS.from_settings("", None, None) is None
    assert ServerTLS.from_settings("c", "k", "ca").mode == "mtls"
    for args, error in ((("c", None), "--tls-key: required with --tls-cert"),
                        ((None, "k"), "--tls-cert: required with --tls-key"),
                        ((None, None, "ca"), "--tls-client-ca: needs")):
        with pytest.raises(ValueError, match=error):
            ServerTLS.from_settings(*args)
    with pytest.raises(ValueError, match="--classifier-tls-ca: required"):
        ClientTLS.from_settings(None, "c", "k", flag="--classifier-tls-")
    with pytest.raises(ValueError, match="--classifier-tls-key: required with --classifier-tls-cert"):
        ClientTLS.from_settings("ca", "c", None, flag="--classifier-tls-")


def test_a_ca_file_cut_short_or_garbled_is_refused_not_taken_up(tmp_path, pki):
    """A CA the client would take up and then fail every handshake with: the reload keeps the previous channel."""
    whole = pki["ca_path"].read_bytes()
    assert ClientTLS(pki["ca_path"]).credentials() is not None
    for name, text in (("cut", whole[: len(whole) // 2]),
                       ("garbled", whole.replace(whole.splitlines()[2], b"!" * len(whole.splitlines()[2])))):
        (tmp_path / name).write_bytes(text)
        with pytest.raises(ValueError, match="does not parse"):
            ClientTLS(tmp_path / name).credentials()
    bundle = tmp_path / "bundle.pem"  # Mozilla's bundles name each issuer in a comment, in UTF-8
    bundle.write_bytes("# Issuer: CN=Főtanúsítvány\n".encode() + whole + "# Ünnepi CA\n".encode() + whole)
    assert ClientTLS(bundle).credentials() is not None


def test_a_router_with_an_unusable_keys_file_or_certificate_does_not_start(tmp_path):
    config = tmp_path / "tierwise.yaml"
    config.write_text(yaml.safe_dump(router_config("http://127.0.0.1:9", strategy="heuristic")))
    (tmp_path / "keys").write_text(f"{KEY} id=bad/id\n")
    (tmp_path / "empty.crt").write_text("")
    for args, says in ((("--api-keys-file", str(tmp_path / "keys")), "keys:1: id must be"),
                       (("--api-keys-file", str(tmp_path / "missing")), f"the API keys file {tmp_path / 'missing'}: No such"),
                       (("--tls-cert", str(tmp_path / "empty.crt")), "--tls-key: required with --tls-cert"),
                       (("--tls-cert", str(tmp_path / "empty.crt"), "--tls-key", str(tmp_path / "empty.crt")),
                        "cannot serve TLS")):
        router = start("router_service", "--listen", "127.0.0.1:0", "--config", str(config), *args)
        assert router.proc.wait(30) == 2
        deadline = time.monotonic() + 5
        while says not in "".join(router.output) and time.monotonic() < deadline:
            time.sleep(0.05)  # the last lines may still be on their way from the pipe
        output = "".join(router.output)
        assert says in output and KEY not in output, output


def test_a_router_without_a_keys_file_takes_sighup_without_stopping(tmp_path, double):
    with running_router(router_config(double.base_url, strategy="cheapest"), UNUSED_CLASSIFIER, tmp_path,
                        env={KEY_ENV: "k"}) as router:
        router.proc.send_signal(signal.SIGHUP)
        router.wait_for("nothing to reload", timeout=10)
        with grpc.insecure_channel(router.address) as channel:
            assert router_pb2_grpc.RouterServiceStub(channel).Route(pb.RouteRequest(query="hi"), timeout=10).tier == 1
