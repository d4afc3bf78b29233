"""Client of the Tierwise router's gRPC API, blocking and asyncio; needs only grpcio and protobuf.

    from tierwise_client import RouterClient
    with RouterClient("127.0.0.1:50052") as tw:
        print(tw.route("What is 2 + 2?").tier)
        print(tw.complete("Write a haiku").content)
        for piece in tw.stream("Tell me a story"):
            print(piece, end="")

The messages are in tierwise_client.v1.router_pb2 (generated from protos/ by `make protos`).
"""
from tierwise_client.client import AsyncRouterClient, ClientOptions, Messages, RouterClient
from tierwise_client.v1.router_pb2 import (Attempt, CompleteResponse, CompleteStreamResponse, Message,
                                           RouteResponse, Usage)

__version__ = "0.1.0"
__all__ = ["AsyncRouterClient", "Attempt", "ClientOptions", "CompleteResponse", "CompleteStreamResponse", "Message",
           "Messages", "RouteResponse", "RouterClient", "Usage", "__version__"]
