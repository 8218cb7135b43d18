"""``python -m writevue_sandbox``: the sandbox provider on a port, until stopped."""

from __future__ import annotations

import argparse
import signal

from .server import serve_forever


def accounts_help() -> str:
    """What an operator can connect to the sandbox with, from the sandbox's own rules."""
    from . import faults, ga4_data, github, google_oauth, oauth, stripe

    def paths(routes) -> str:
        return ", ".join(route[0] for route in routes)

    kinds = faults._ITEM.pattern.split("(")[1].split(")")[0].replace("|", ", ")
    return "\n".join(
        [
            "accounts and keys (every key is its own account, with seeded data derived from it):",
            f"  stripe   an API key starting {' or '.join(stripe.KEY_PREFIXES)} "
            "(e.g. sk_test_acme); anything else is refused (401)",
            f"  github   a token starting {' or '.join(github.PAT_PREFIXES)}, any owner; "
            "an owner whose login starts with 'missing' does not exist (404)",
            "  rest     a bearer key starting rest_, or basic auth with a password starting pw_",
            f"  faults   append {faults.SEPARATOR}PLAN to a key: {kinds} "
            f"(e.g. sk_test_acme{faults.SEPARATOR}429x2,latency50)",
            "",
            "OAuth (GitHub- and Google-shaped, for ga4 and OAuth connections):",
            f"  client id      {oauth.SANDBOX_CLIENT_ID} (any id starting {oauth.CLIENT_PREFIX})",
            f"  client secret  {oauth.SANDBOX_CLIENT_SECRET} (public: sandbox only)",
            "  consent        OAuth 2: approves at once, as the login_hint, else "
            f"{oauth.DEFAULT_ACCOUNT}; Google-shaped: a consent page, press Allow (no password)",
            f"  ga4 property ids {', '.join(ga4_data.properties_for(oauth.DEFAULT_ACCOUNT))} "
            f"(what {oauth.DEFAULT_ACCOUNT} can read; another property answers 403)",
            f"  endpoints      {paths(oauth.routes())} (OAuth 2); "
            f"{paths(google_oauth.routes())} (Google-shaped)",
            "",
            "connect to it (the sandbox's address in both options; OAuth needs the second):",
            "  --option base_url=http://HOST:PORT --option auth_base_url=http://HOST:PORT",
            "  with WRITEVUE_OAUTH_<SOURCE>_CLIENT_ID and _CLIENT_SECRET set to the client above",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="writevue-sandbox",
        description="A local stand-in for the providers WriteVue reads.",
        epilog=accounts_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="default 8765")
    parser.add_argument("--latency-s", type=float, default=0.0, help="delay every answer")
    args = parser.parse_args(argv)
    print(f"sandbox provider on http://{args.host}:{args.port}", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        serve_forever(args.host, args.port, latency_s=args.latency_s)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
