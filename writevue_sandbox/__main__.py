"""``python -m writevue_sandbox``: the sandbox provider on a port, until stopped."""

from __future__ import annotations

import argparse
import signal

from .server import serve_forever


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="writevue-sandbox", description="A local stand-in for the providers WriteVue reads."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
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
