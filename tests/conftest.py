from __future__ import annotations

import grpc
import pytest

from tierwise.data import shared_files
from tierwise.v1 import classifier_pb2_grpc

from .exported_metrics import Stack, exporting_stack
from .provider_double import ProviderDouble
from .servers import start_classifier


def pytest_collection_modifyitems(config, items):
    if shared_files():
        return
    skip = pytest.mark.skip(reason="../shared/data/routing is absent: data-dependent test skipped")
    for item in items:
        if "data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def double():
    """The provider double, one per module (a module may define its own)."""
    with ProviderDouble() as provider:
        yield provider


@pytest.fixture(scope="session")
def classifier():
    """One real classifier server on 127.0.0.1 shared by the read-only tests."""
    service = start_classifier()
    yield service
    assert service.stop() == 0, "".join(service.output)


@pytest.fixture(scope="session")
def stub(classifier):
    with grpc.insecure_channel(classifier.address) as channel:
        yield classifier_pb2_grpc.ClassifierServiceStub(channel)


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Stack:
    """The classifier's and router's exported metrics after a few calls (tests/exported_metrics.py): data only, its
    services stopped, read by the dashboard's and the alerts' tests."""
    return exporting_stack(tmp_path_factory)
