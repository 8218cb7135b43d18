"""``writevue keys …``: rotate the key ring, retire old keys, rotate the session secret."""

from __future__ import annotations

import sys

from .app import arg, command, group
from .inputs import progress_bar, ready_runtime

group("keys", "the encryption key ring")


@command(
    "keys rotate",
    "add a key and re-encrypt every secret under it; rerun to resume an interrupted one",
    arg("--batch", type=int, default=1000, metavar="ROWS"),
    audit=False,  # re-encrypts every secret and shows none
)
def rotate(args) -> None:
    from ..privacy import keys

    runtime = ready_runtime()
    try:
        report = keys.rotate_keys(runtime, batch_size=args.batch, progress=progress_bar())
    except KeyboardInterrupt:
        print(
            "\nwritevue: rotation interrupted; every finished batch is saved. "
            "Rerun `writevue keys rotate` to continue.",
            file=sys.stderr,
        )
        raise
    for line in report.lines():
        print(line)
    print("older keys can now be retired with `writevue keys retire VERSION`", file=sys.stderr)


@command(
    "keys retire",
    "remove an old key once no secret uses it",
    arg("version", type=int),
    audit=False,
)
def retire(args) -> None:
    from ..privacy import keys

    runtime = ready_runtime()
    report = keys.retire_key(runtime, args.version)
    print(
        f"retired key version {report.version}; the ring holds "
        f"{', '.join(map(str, report.remaining))}"
    )


@command(
    "keys rotate-session-secret",
    "replace the secret that signs dashboard sessions; open pages are asked to reload",
    audit=False,
)
def rotate_session_secret(_args) -> None:
    from ..session_secret import rotate_session_secret

    runtime = ready_runtime()
    rotate_session_secret(runtime.settings.session_secret_file)
    print(
        "session secret rotated: every dashboard process signs new sessions with it within "
        "a second, and open pages ask their viewer to reload"
    )
