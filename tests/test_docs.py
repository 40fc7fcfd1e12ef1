"""Every command README.md and docs/ show still runs as written: each entry-point command composes
with Hydra (its overrides, sweeps and ``--cfg`` included), each ``python -m`` module exists,
each benchmark script and make target exists."""

from __future__ import annotations

import importlib.util
import re
import shlex

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from helpers.runs import CONF_DIR, ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ENTRY_POINT = re.compile(r"(?:^|/)(train|eval|locate|app|pack|download|build_city)\.py$")
FIXED = ["paths.root_dir=/ROOT", "paths.output_dir=/ROOT/run"]


def fenced_commands(text: str) -> list[str]:
    """The commands of a document's ```bash blocks, continuation lines joined."""
    commands, in_block, pending = [], False, ""
    for line in text.splitlines():
        if line.startswith("```"):
            in_block = line.strip() == "```bash" if not in_block else False
            continue
        if in_block and line.strip():
            pending += line.rstrip()
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            commands.append(pending.strip())
            pending = ""
    return commands


def invocations(command: str) -> list[tuple[str, list[str]]]:
    """``(what, arguments)`` of each program a shell command runs: an entry point's config name and
    its arguments, ``module`` and its name for ``python -m``, ``script`` for another Python file,
    ``make`` and its targets; other programs (vllm, pip, ...) are left out."""
    found = []
    for part in command.split(" | "):
        tokens = shlex.split(part, comments=True)
        while tokens and re.match(r"^[A-Z_]+=", tokens[0]):  # VARIABLE=value before the program
            tokens = tokens[1:]
        if tokens[:1] == ["make"]:
            found.append(("make", [token for token in tokens[1:] if "=" not in token]))
            continue
        for position, token in enumerate(tokens):
            entry = ENTRY_POINT.search(token)
            if entry:
                found.append((entry.group(1), tokens[position + 1 :]))
                break
            rest = tokens[position + 1 :]
            if token.endswith("python") and rest[:1] == ["-m"]:
                found.append(("module", rest[1:2]))
                break
            if token.endswith("python") and rest and rest[0].endswith(".py") and not ENTRY_POINT.search(rest[0]):
                found.append(("script", rest[:1]))
                break
    return found


def compositions(arguments: list[str]) -> list[list[str]]:
    """The override lists one command composes: flags dropped, a sweep (``-m``) one composition per
    value of each swept key (the other keys at their first value)."""
    overrides, skip = [], False
    for argument in arguments:
        if skip:
            skip = False
        elif argument in ("--cfg", "-c", "--package", "-p"):
            skip = True
        elif not argument.startswith("-"):
            overrides.append(argument)
    parsed = OverridesParser.create().parse_overrides(overrides)
    first = [o.input_line if not o.is_sweep_override() else f"{o.key_or_group}={next(o.sweep_string_iterator())}"
             for o in parsed]  # fmt: skip
    variants = [first]
    for index, override in enumerate(parsed):
        if override.is_sweep_override():
            for value in list(override.sweep_string_iterator())[1:]:
                variants.append([*first[:index], f"{override.key_or_group}={value}", *first[index + 1 :]])
    return variants


def documented() -> list[tuple[str, str]]:
    return [(path.relative_to(ROOT).as_posix(), command)
            for path in DOCUMENTS for command in fenced_commands(path.read_text())]  # fmt: skip


def test_the_documents_show_their_commands_in_fenced_blocks():
    commands = documented()
    assert len(commands) > 60, f"only {len(commands)} commands found in README.md and docs/"
    for path in DOCUMENTS:
        indented = [line for line in path.read_text().splitlines() if re.match(r"^    (python|make) ", line)]
        assert not indented, f"{path.name}: commands outside fenced bash blocks escape the check: {indented}"


@pytest.mark.slow  # about 150 compositions
def test_every_documented_command_composes():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    failures, seen = [], set()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        for document, command in documented():
            for what, arguments in invocations(command):
                try:
                    if what == "module":
                        assert importlib.util.find_spec(arguments[0]) is not None, f"no module {arguments[0]}"
                    elif what == "script":
                        assert (ROOT / arguments[0]).is_file(), f"no script {arguments[0]}"
                    elif what == "make":
                        assert set(arguments) <= targets, f"no make target {set(arguments) - targets}"
                    else:
                        for overrides in compositions(arguments):
                            if (what, *overrides) in seen:  # README and docs/ show some commands twice
                                continue
                            seen.add((what, *overrides))
                            config = compose(what, overrides=[*FIXED, *overrides], return_hydra_config=True)
                            OmegaConf.to_container(config, resolve=False)
                            job = {key: value for key, value in config.items() if key != "hydra"}
                            OmegaConf.to_container(OmegaConf.create(job), resolve=True)
                except Exception as error:  # every failure is listed, not only the first
                    failures.append(f"{document}: {command}\n    {type(error).__name__}: {str(error).splitlines()[0]}")
    assert not failures, f"{len(failures)} documented commands do not compose:\n" + "\n".join(failures)


def test_a_command_that_no_longer_composes_is_found():
    assert invocations("python train.py backbone=resnet9000  # a comment") == [("train", ["backbone=resnet9000"])]
    assert invocations("cat d.txt | python locate.py queries=-") == [("locate", ["queries=-"])]
    assert invocations("torchrun --nproc_per_node=4 train.py trainer=gpu") == [("train", ["trainer=gpu"])]
    assert compositions(["-m", "city=A,B", "img=sat", "--cfg", "job"]) == [["city=A", "img=sat"], ["city=B", "img=sat"]]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        with pytest.raises(Exception, match="resnet9000"):
            compose("train", overrides=[*FIXED, "backbone=resnet9000"])
