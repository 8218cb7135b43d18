"""docs/operator-guide.md stays true: it names everything the code location defines, and
every command line it shows is a command `writevue` has, with options that command takes.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from writevue_pipelines.cli.app import commands
from writevue_pipelines.defs import defs

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "operator-guide.md"


def guide() -> str:
    return GUIDE.read_text()


def named(text: str) -> set[str]:
    """Every `code span` of the text (a name the guide gives in backquotes)."""
    return set(re.findall(r"`([^`\n]+)`", text))


def definitions() -> dict[str, set[str]]:
    """What an operator sees in the Dagster UI, by kind: the names the guide must give."""
    repository = defs.get_repository_def()
    graph = repository.asset_graph
    return {
        "asset": {key.to_user_string() for key in graph.get_all_asset_keys()},
        "check": {key.name for key in graph.asset_check_keys},
        "schedule": {schedule.name for schedule in repository.schedule_defs},
        "sensor": {sensor.name for sensor in repository.sensor_defs},
        # Dagster's own implicit jobs (`__ASSET_JOB`, a schedule's anonymous one) are not ours
        "job": {job.name for job in repository.get_all_jobs() if not job.name.startswith("__")},
    }


@pytest.mark.parametrize("kind", ["asset", "check", "schedule", "sensor", "job"])
def test_the_guide_names_every_dagster_definition(kind):
    missing = sorted(definitions()[kind] - named(guide()))
    assert not missing, f"docs/operator-guide.md does not name these {kind}s: {missing}"


def command_lines(text: str) -> list[str]:
    """The `writevue …` lines of the guide's code blocks, without comments."""
    lines = []
    for block in re.findall(r"```(?:sh|bash|console)?\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip().removeprefix("$ ")
            if re.match(r"(\S*/)?writevue\s", line):
                lines.append(line)
    return lines


def test_every_command_the_guide_shows_exists_with_those_options():
    known = {command.path: command for command in commands()}
    groups = {path[0] for path in known if len(path) > 1}
    lines = command_lines(guide())
    assert len(lines) >= 20, "the guide shows the commands an operator types"
    wrong = []
    for line in lines:
        words = shlex.split(line.split("|", 1)[0] if " | " in line else line)[1:]
        path = tuple(words[:2]) if words and words[0] in groups else tuple(words[:1])
        command = known.get(path)
        if command is None:
            wrong.append(f"{line}: no command `writevue {' '.join(path)}`")
            continue
        flags = {flag for argument in command.args for flag in argument.flags} | {"--help"}
        for word in words[len(path) :]:
            flag = word.split("=", 1)[0]
            if flag.startswith("--") and flag not in flags:
                wrong.append(f"{line}: `writevue {' '.join(path)}` has no {flag}")
    assert not wrong, "\n".join(wrong)


def test_the_guide_has_each_playbook_with_symptoms_commands_and_a_check():
    text = guide()
    playbooks = re.split(r"\n### ", text.split("\n## Playbooks", 1)[1])[1:]
    titles = [playbook.splitlines()[0] for playbook in playbooks]
    for wanted in (
        "source is down",
        "revoked",
        "key must rotate",
        "erasure",
        "export",
        "dashboard process dies",
    ):
        assert any(wanted in title for title in titles), (wanted, titles)
    for title, playbook in zip(titles, playbooks, strict=True):
        for part in ("**Symptoms**", "**Do**", "**Confirm**"):
            assert part in playbook, f"playbook '{title}' has no {part}"
        assert "writevue " in playbook, f"playbook '{title}' shows no command"
