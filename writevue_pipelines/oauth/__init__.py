"""OAuth2 for connections: authorisation code + PKCE, token refresh with rotation, revocation.

The flow, in the order it happens, one module each:

1. ``flow.begin_authorization`` returns the provider's authorisation URL for the
   client to open; ``flow.complete_authorization`` exchanges the code from the
   callback and creates the connection with its tokens encrypted.
2. ``tokens.token_source`` hands connectors a valid access token, refreshing it (with
   refresh-token rotation, exactly once across processes) as it expires or after a 401.
3. ``revocation.revoke_grant`` ends the grant at the provider, for erasure.

``endpoints`` says where a connection's endpoints are and which client WriteVue is
there: ``WRITEVUE_OAUTH_<SOURCE>_CLIENT_ID`` and ``WRITEVUE_OAUTH_<SOURCE>_CLIENT_SECRET``
from the environment, for every provider alike.
"""

from .endpoints import ClientCredentials, Endpoints, client_credentials
from .flow import begin_authorization, complete_authorization, parse_callback
from .revocation import revoke_grant
from .tokens import NEEDS_REAUTH, ConnectionTokens, InvalidGrant, Tokens, token_source

__all__ = [
    "NEEDS_REAUTH",
    "ClientCredentials",
    "ConnectionTokens",
    "Endpoints",
    "InvalidGrant",
    "Tokens",
    "begin_authorization",
    "client_credentials",
    "complete_authorization",
    "parse_callback",
    "revoke_grant",
    "token_source",
]
