"""The README and docs/ say what the code does: their links lead somewhere, the `raymae`
commands they show are accepted by the real command line, and the configuration page
names every flag and every setting.

Nothing here runs a command; the commands are parsed with `raymae.cli.build_parser`
(as tests/test_infra.py does for the manifests' entrypoints).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
from pathlib import Path

import pytest

from tests.scripts import assert_cli_accepts

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "infra" / "README.md"]
CONFIGURATION = ROOT / "docs" / "configuration.md"
SHELL_BLOCKS = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
JOB_SCRIPT = re.compile(r"^jobs/([A-Za-z0-9_]+)\.py$")


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ------------------------------------------------------------------ reading markdown
def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return [(m.group(1).strip().lower(), m.group(2)) for m in FENCE.finditer(text)]


def prose(text: str) -> str:
    """The text outside fenced blocks and inline code, where links live."""
    text = FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())  # a link keeps its text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown page; repeated headings get -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        if m := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line):
            base = slug(m.group(1))
            n = seen.get(base, 0)
            out.add(base if n == 0 else f"{base}-{n}")
            seen[base] = n + 1
    return out


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(path.read_text(encoding="utf-8")))
            if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # http:, https:, mailto: are not checked


def broken(path: Path, target: str) -> str | None:
    """Why a relative link from ``path`` leads nowhere, or None."""
    file_part, _, anchor = target.partition("#")
    dest = (path.parent / file_part).resolve() if file_part else path
    if not dest.exists():
        return f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}"
    if anchor:
        if dest.suffix != ".md":
            return f"{target}: an anchor into a file that is not markdown"
        if anchor not in anchors(dest):
            return f"{target}: no heading with anchor #{anchor} in {page_id(dest)}"
    return None


# ------------------------------------------------------------------ commands shown
def shell_commands(text: str) -> list[list[str]]:
    """Every simple command of the shell blocks, as argv: continuation lines joined,
    comments dropped, split at &&, ||, ; and |."""
    commands = []
    for language, body in fenced_blocks(text):
        if language not in SHELL_BLOCKS:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line.removeprefix("$ "), comments=True)
            current: list[str] = []
            for token in [*tokens, ";"]:
                if token in ("&&", "||", ";", "|"):
                    if current:
                        commands.append(current)
                    current = []
                else:
                    current.append(token)
    return commands


def raymae_invocation(argv: list[str]) -> tuple[str, list[str], bool] | None:
    """(subcommand, its flags, through a job script?) when ``argv`` runs raymae: `raymae ...`,
    `python -m raymae ...`, or `python jobs/<name>.py ...` (also after `ray job submit ... --`)."""
    while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):  # VAR=value in front
        argv = argv[1:]
    if argv[:3] == ["ray", "job", "submit"] and "--" in argv:
        argv = argv[argv.index("--") + 1:]
    if argv[:1] == ["raymae"] and len(argv) > 1:
        return argv[1], argv[2:], False
    if len(argv) > 3 and Path(argv[0]).name in ("python", "python3") and argv[1:3] == ["-m", "raymae"]:
        return argv[3], argv[4:], False
    if len(argv) > 1 and Path(argv[0]).name in ("python", "python3") and (m := JOB_SCRIPT.match(argv[1])):
        return m.group(1), argv[2:], True
    return None


def documented_commands() -> list[tuple[str, str, list[str], bool]]:
    """(page, subcommand, flags, through a job script) of every raymae command the pages show."""
    found = []
    for path in PAGES:
        for argv in shell_commands(path.read_text(encoding="utf-8")):
            if (call := raymae_invocation(argv)) is not None:
                found.append((page_id(path), *call))
    return found


def subcommands() -> dict[str, argparse.ArgumentParser]:
    from raymae.cli import build_parser

    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


# ------------------------------------------------------------------ links
@pytest.mark.parametrize("path", PAGES, ids=page_id)
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(path):
    problems = [why for target in relative_links(path) if (why := broken(path, target))]
    assert not problems, f"{page_id(path)}: " + "; ".join(problems)


def test_the_link_check_finds_links_and_catches_a_broken_file_or_anchor(tmp_path):
    readme_links = relative_links(ROOT / "README.md")
    assert "docs/report-screenshot.png" in readme_links and "docs/reliability.md" in readme_links
    assert broken(ROOT / "README.md", "docs/configuration.md#every-setting") is None
    assert "no file" in broken(ROOT / "README.md", "docs/nothing-here.md")
    assert "no heading" in broken(ROOT / "README.md", "docs/configuration.md#no-such-section")
    assert "no heading" in broken(ROOT / "README.md", "#no-such-section")


def test_anchors_are_made_as_github_makes_them(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Output schema (a contract)\n## `raymae score`\n```bash\n# not a heading\n```\n"
                    "## Notes\n## Notes\n### Measured: faults injected, rows lost\n")
    assert anchors(page) == {"output-schema-a-contract", "raymae-score", "notes", "notes-1",
                             "measured-faults-injected-rows-lost"}


# ------------------------------------------------------------------ commands
COMMANDS = documented_commands()


@pytest.mark.parametrize("page,name,args,through_job", COMMANDS,
                         ids=[f"{p}: {n} {' '.join(a)[:60]}" for p, n, a, _ in COMMANDS])
def test_every_raymae_command_shown_is_accepted_by_the_cli(page, name, args, through_job):
    assert name in subcommands(), f"{page}: `raymae {name}` is not a raymae command"
    assert_cli_accepts(page, name, args, through_job=through_job)


def test_the_pages_show_every_command_and_the_check_finds_them():
    assert {name for _, name, _, _ in COMMANDS} == set(subcommands())
    shown = {(page, name) for page, name, _, through_job in COMMANDS if through_job}
    assert {("README.md", job) for job in ("train", "evaluate", "score", "report")} <= shown  # ray job submit
    (install,) = [c for c in COMMANDS if c[0] == "README.md" and c[1] == "demo"]  # after `pip install ... &&`
    assert install[2] == ["--workdir", "demo"]


def test_a_command_the_cli_would_reject_fails_the_check():
    text = "```bash\nraymae train --data d --out m \\\n    --workers 0   # zero workers\n```\n"
    [(name, args, through_job)] = [raymae_invocation(a) for a in shell_commands(text)]
    assert (name, args) == ("train", ["--data", "d", "--out", "m", "--workers", "0"])
    with pytest.raises(pytest.fail.Exception, match="rejects"):
        assert_cli_accepts("example", name, args, through_job=through_job)


# ------------------------------------------------------------------ the configuration page
def section(text: str, heading: str) -> str:
    """The text under the first heading that contains ``heading``, up to the next heading of its
    level or above."""
    m = re.search(rf"^(#+) .*{re.escape(heading)}.*$", text, re.M)
    assert m, f"docs/configuration.md has no heading {heading!r}"
    level = len(m.group(1))
    rest = text[m.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    return rest[:end.start()] if end else rest


def test_the_configuration_page_names_every_flag_of_every_command():
    text = CONFIGURATION.read_text(encoding="utf-8")
    missing = []
    for name, parser in subcommands().items():
        part = section(text, f"`raymae {name}`")
        for action in parser._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help" and not re.search(rf"(?<![\w-]){flag}(?![\w-])", part):
                    missing.append(f"raymae {name} {flag}")
    assert not missing, f"docs/configuration.md does not describe: {', '.join(missing)}"


def test_the_configuration_page_names_every_setting_in_its_section():
    from raymae.config import RaymaeConfig

    text = CONFIGURATION.read_text(encoding="utf-8")
    missing = []
    for f in dataclasses.fields(RaymaeConfig):
        default = getattr(RaymaeConfig(), f.name)
        if dataclasses.is_dataclass(default):  # a section: each of its settings in its own part
            part, prefix, names = section(text, f"`{f.name}`"), f"{f.name}.", [g.name for g in dataclasses.fields(default)]
        else:
            part, prefix, names = section(text, "Top level"), "", [f.name]
        missing += [prefix + n for n in names if f"`{n}`" not in part]
    assert not missing, f"docs/configuration.md does not describe: {', '.join(missing)}"
