"""The Python client of the router: the tierwise-client distribution (clients/python), re-exported here so
`from tierwise.client import RouterClient` keeps working. The code lives only in tierwise_client."""
from tierwise_client import AsyncRouterClient, ClientOptions, Messages, RouterClient

__all__ = ["AsyncRouterClient", "ClientOptions", "Messages", "RouterClient"]
