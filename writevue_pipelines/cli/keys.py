"""``writevue keys …``: rotate the key ring, retire old keys, rotate the session secret."""

from __future__ import annotations

import sys

from .app import CliError, arg, command, group
from .inputs import ready_runtime
from .progress import Progress

group("keys", "the encryption key ring")


def progress_bar():
    """The rotation's progress on stderr: a bar per table on a terminal, lines elsewhere."""
    return Progress()


@command(
    "keys rotate",
    "add a key and re-encrypt every secret under it; rerun to resume an interrupted one",
    arg("--batch", type=int, default=1000, metavar="ROWS"),
    audit=False,  # re-encrypts every secret and shows none
)
def rotate(args) -> None:
    from ..privacy import keys

    runtime = ready_runtime()
    progress = progress_bar()
    try:
        report = keys.rotate_keys(runtime, batch_size=args.batch, progress=progress)
    except KeyboardInterrupt:
        getattr(progress, "close", lambda: None)()  # the bar stops before the message
        print(
            "\nwritevue: rotation interrupted; every finished batch is saved. "
            "Rerun `writevue keys rotate` to continue.",
            file=sys.stderr,
        )
        raise
    finally:
        getattr(progress, "close", lambda: None)()
    for line in report.lines():
        print(line)
    # The ring as saved now (the runtime's was loaded before the new key was added).
    ring = keys.load_key_ring(runtime.settings.key_file)
    older = [v for v in sorted(ring.versions) if v != report.primary]
    if older:
        retire = ", ".join(f"`writevue keys retire {v}`" for v in older)
        print(f"older keys can now be retired: {retire}", file=sys.stderr)


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
    remaining = ", ".join(map(str, report.remaining))
    versions = "key version" if len(report.remaining) == 1 else "key versions"
    print(f"retired key version {report.version}; the ring holds {versions} {remaining}")


@command(
    "keys rotate-session-secret",
    "replace the secret that signs dashboard sessions; open pages are asked to reload",
    audit=False,
)
def rotate_session_secret(_args) -> None:
    from ..session_secret import rotate_session_secret

    runtime = ready_runtime()
    if runtime.settings.session_secret_from_env:
        raise CliError(
            "The session secret comes from WRITEVUE_SESSION_SECRET: give every dashboard "
            "process a new value and restart them."
        )
    rotate_session_secret(runtime.settings.session_secret_file)
    print(
        "session secret rotated: every dashboard process signs new sessions with it within "
        "a second, and open pages ask their viewer to reload"
    )
