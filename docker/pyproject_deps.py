"""Print the requirements of ./pyproject.toml: [project] dependencies plus the named extras, one per line.

    python pyproject_deps.py weights > requirements.txt   # extras comma-separated; "" for none

The image installs these in a layer of its own, before the source is copied, so editing the code
does not reinstall torch. It reads the project's own pyproject.toml: there is no second list to keep
in step. An extra that pyproject.toml does not define is an error (exit status 2), not a silent no-op.
"""

from __future__ import annotations

import sys
from pathlib import Path

import tomllib


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    missing = [e for e in extras if e not in optional]
    if missing:
        raise SystemExit(
            f"pyproject_deps: extra(s) {', '.join(missing)} not defined in {pyproject} "
            f"(defined: {', '.join(sorted(optional)) or 'none'})"
        )
    name = project["name"]
    reqs = list(project.get("dependencies", []))
    for extra in extras:
        # An extra may name the project itself (effnet[dev]); its own dependencies are listed already.
        reqs += [r for r in optional[extra] if not r.replace(" ", "").startswith((f"{name}[", f"{name};"))]
    return reqs


def main(argv: list[str]) -> int:
    extras = [e.strip() for e in (argv[1] if len(argv) > 1 else "").split(",") if e.strip()]
    try:
        print("\n".join(requirements(Path("pyproject.toml"), extras)))
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
