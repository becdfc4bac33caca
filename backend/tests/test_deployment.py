"""Check the Docker Compose deployment without a Docker engine.

The checks parse docker-compose.yml, the Dockerfiles, the .dockerignore files
and .env.example, and validate the compose file against the Compose
Specification's JSON Schema. They compare these files with the backend
settings, the frontend's package.json and nuxt.config.ts, and the commands
that the end-to-end tests start. Each check returns a list of problems, so that the
negative tests can run it on a broken copy of the files and see it report.
They need no database and no network.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]

COMPOSE_FILE = "docker-compose.yml"
ENV_EXAMPLE_FILE = ".env.example"
SCHEMA_FILE = "backend/tests/schemas/compose-spec.json"
SETTINGS_FILE = "backend/app/settings.py"
FRONTEND_PACKAGE_FILE = "frontend/package.json"
NUXT_CONFIG_FILE = "frontend/nuxt.config.ts"
DOCKERFILES = {"backend": "backend/Dockerfile", "frontend": "frontend/Dockerfile"}
DOCKERIGNORE_FILES = {"backend": "backend/.dockerignore", "frontend": "frontend/.dockerignore"}

# The start-up commands of the images, written out so that the Dockerfiles,
# the compose file and the end-to-end tests can be compared with them.
BACKEND_COMMAND = ["sh", "-c", "alembic upgrade head && exec uvicorn app.main:app --host 0.0.0.0 --port 8000"]
WORKER_COMMAND = ["python", "-m", "app.worker"]
FRONTEND_COMMAND = ["node", ".output/server/index.mjs"]
MIGRATE_COMMAND = "alembic upgrade head"
SERVE_COMMAND = "uvicorn app.main:app"

# Where the end-to-end start-up code lives: the backend's test helpers and the
# frontend's Playwright set-up. Paths are globs relative to the repository.
STARTUP_SOURCE_GLOBS = [
    "backend/tests/**/*.py",
    *(
        f"frontend/{folder}/**/*.{suffix}"
        for folder in ["test", "tests", "e2e"]
        for suffix in ["ts", "mts", "js", "mjs"]
    ),
    "frontend/playwright.config.*",
]

# Entries that both .dockerignore files must have, without leading `**/` or
# `/` and trailing `/`.
REQUIRED_DOCKERIGNORE_ENTRIES = ["node_modules", ".venv", ".output", ".nuxt", "test-results", ".data", ".env"]

# Pairs of (service, dependency): the service must wait until the dependency reports healthy.
REQUIRED_HEALTHY_DEPENDENCIES = [("backend", "db"), ("frontend", "backend"), ("worker", "db")]

# Fragments each service's healthcheck command must contain.
REQUIRED_HEALTHCHECK_FRAGMENTS = {
    "db": ["pg_isready"],
    "backend": ["python", "urllib", "http://127.0.0.1:8000/health"],
    "frontend": ["node", "fetch", "http://127.0.0.1:3000/"],
}

PUBLISHED_PORTS = {"backend": "8000", "frontend": "3000"}
SERVICES_WITH_RESTART = ["backend", "worker", "frontend"]
SECRET_NAME_PATTERN = re.compile(r"PASSWORD|TOKEN|SECRET", re.IGNORECASE)

# Placeholder for the one value that .env.example leaves empty on purpose.
TEST_POSTGRES_PASSWORD = "placeholder-for-tests"

# `$$`, `${NAME}`, `${NAME:-default}`, `${NAME-default}`, `${NAME:?message}`,
# `${NAME?message}` and `$NAME`, as Compose interpolates them.
INTERPOLATION_PATTERN = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<operator>:?[-?])(?P<argument>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariableError(ValueError):
    """A required compose variable (`${NAME:?message}`) is unset or empty."""


@dataclass
class EnvEntry:
    value: str
    comment: str


@dataclass
class Instruction:
    keyword: str
    arguments: str
    stage: int


@dataclass
class Deployment:
    """The deployment files of one repository tree, parsed."""

    root: Path
    compose: dict[str, Any]
    env: dict[str, EnvEntry]
    schema: dict[str, Any]
    dockerfiles: dict[str, list[Instruction]]
    dockerignores: dict[str, list[str]]
    package: dict[str, Any]
    nuxt_config: str
    settings_names: list[str]
    startup_sources: dict[str, str] = field(default_factory=dict)

    def interpolation_variables(self) -> dict[str, str]:
        """Return the .env.example values with the empty password filled in."""
        variables = {name: entry.value for name, entry in self.env.items()}
        variables["POSTGRES_PASSWORD"] = TEST_POSTGRES_PASSWORD
        return variables


# Parsing


def parse_env_file(text: str) -> dict[str, EnvEntry]:
    """Parse `NAME=value` lines, each with the comment line right above it."""
    entries: dict[str, EnvEntry] = {}
    previous_comment = ""
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line:
            previous_comment = ""
            continue
        if line.startswith("#"):
            previous_comment = line.lstrip("#").strip()
            continue

        match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", line)
        if match is None:
            raise ValueError(f"{ENV_EXAMPLE_FILE} line {number} is not NAME=value: {raw_line!r}")
        name, value = match.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        entries[name] = EnvEntry(value=value, comment=previous_comment)
        previous_comment = ""
    return entries


def parse_dockerfile(text: str) -> list[Instruction]:
    """Split a Dockerfile into instructions, numbering the build stages from 0."""
    logical_lines: list[str] = []
    pending = ""
    for raw_line in text.splitlines():
        stripped = raw_line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        logical_lines.append(pending + stripped)
        pending = ""
    if pending:
        logical_lines.append(pending)

    instructions = []
    stage = -1
    for line in logical_lines:
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword=keyword, arguments=arguments.strip(), stage=stage))
    return instructions


def parse_dockerignore(text: str) -> list[str]:
    """Return the patterns of a .dockerignore file, normalised for comparison."""
    patterns = []
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("**/").removeprefix("/").removesuffix("/")
        patterns.append(line)
    return patterns


def parse_settings_names(source: str) -> list[str]:
    """Return the environment names of the fields of the pydantic-settings class."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        base_names = {ast.unparse(base) for base in node.bases}
        if not base_names & {"BaseSettings", "pydantic_settings.BaseSettings"}:
            continue
        names = []
        for statement in node.body:
            if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                name = statement.target.id
                if name != "model_config" and not name.startswith("_"):
                    names.append(name.upper())
        return names
    raise ValueError(f"{SETTINGS_FILE} has no class derived from BaseSettings")


def find_startup_sources(root: Path) -> dict[str, str]:
    """Read the end-to-end start-up code, keyed by path relative to root."""
    own_path = Path(__file__).name
    sources = {}
    for pattern in STARTUP_SOURCE_GLOBS:
        for path in sorted(root.glob(pattern)):
            relative = path.relative_to(root).as_posix()
            if "node_modules" in path.parts or path.name == own_path or not path.is_file():
                continue
            sources[relative] = path.read_text(encoding="utf-8")
    return sources


def load_deployment(root: Path) -> Deployment:
    dockerfiles = {name: parse_dockerfile((root / path).read_text()) for name, path in DOCKERFILES.items()}
    dockerignores = {name: parse_dockerignore((root / path).read_text()) for name, path in DOCKERIGNORE_FILES.items()}
    return Deployment(
        root=root,
        compose=yaml.safe_load((root / COMPOSE_FILE).read_text()),
        env=parse_env_file((root / ENV_EXAMPLE_FILE).read_text()),
        schema=json.loads((root / SCHEMA_FILE).read_text()),
        dockerfiles=dockerfiles,
        dockerignores=dockerignores,
        package=json.loads((root / FRONTEND_PACKAGE_FILE).read_text()),
        nuxt_config=(root / NUXT_CONFIG_FILE).read_text(),
        settings_names=parse_settings_names((root / SETTINGS_FILE).read_text()),
        startup_sources=find_startup_sources(root),
    )


# Interpolation and small helpers


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Substitute `${...}` references as Compose does, raising on a missing required one."""

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("named")
        operator = match.group("operator") or ""
        argument = match.group("argument") or ""
        current = variables.get(name)
        is_missing = current is None or (operator.startswith(":") and current == "")
        if operator.endswith("?") and is_missing:
            raise MissingVariableError(f"required variable {name} is missing: {argument}")
        if operator.endswith("-") and is_missing:
            return argument
        return current or ""

    return INTERPOLATION_PATTERN.sub(substitute, value)


def interpolate_tree(node: Any, variables: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: interpolate_tree(value, variables) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(item, variables) for item in node]
    if isinstance(node, str):
        return interpolate(node, variables)
    return node


def iter_strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from iter_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from iter_strings(item)
    elif isinstance(node, str):
        yield node


def iter_references(compose: dict[str, Any]) -> Iterator[re.Match[str]]:
    """Yield every variable reference in the compose file's values, `$$` excluded."""
    for text in iter_strings(compose):
        for match in INTERPOLATION_PATTERN.finditer(text):
            if not match.group("escaped"):
                yield match


def service_environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        pairs = (item.partition("=") for item in environment)
        return {name: value for name, _, value in pairs}
    return {name: "" if value is None else str(value) for name, value in environment.items()}


def parse_duration_seconds(text: str) -> float:
    """Convert a compose duration such as `1m30s` or `20s` to seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"invalid duration {text!r}, expected a value such as 20s or 1m30s")
    return sum(float(number) * units[unit] for number, unit in parts)


def command_tokens(text: str) -> list[str]:
    """Split code into word-like tokens, so that `'alembic', 'upgrade', 'head'` and
    `alembic upgrade head` compare equal and paths split at `/`."""
    return re.findall(r"[A-Za-z0-9_.:-]+", text)


def contains_command(text: str, command: str) -> bool:
    expected = command_tokens(command)
    tokens = command_tokens(text)
    return any(tokens[index : index + len(expected)] == expected for index in range(len(tokens)))


def dockerfile_command(instructions: list[Instruction]) -> list[str] | str | None:
    commands = [instruction.arguments for instruction in instructions if instruction.keyword == "CMD"]
    if not commands:
        return None
    try:
        return json.loads(commands[-1])
    except json.JSONDecodeError:
        return commands[-1]


def image_tag_problem(reference: str) -> str | None:
    """Describe why an image reference is not pinned to a version, or return None."""
    if "@sha256:" in reference:
        return None
    name, _, tag = reference.rpartition(":")
    if not name or "/" in tag:
        return f"image {reference!r} has no tag; pin a version such as python:3.11.14-slim-bookworm"
    if tag == "latest":
        return f"image {reference!r} uses the moving tag latest; pin a version"
    if not re.search(r"\d", tag):
        return f"image {reference!r} has no version number in its tag"
    return None


@contextmanager
def patched_environ(values: dict[str, str], removed: list[str]) -> Iterator[None]:
    saved = dict(os.environ)
    try:
        for name in removed:
            os.environ.pop(name, None)
        os.environ.update(values)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def load_settings_class(root: Path) -> type:
    """Import the Settings class from its file, so that no sys.path set-up is needed."""
    path = root / SETTINGS_FILE
    module_name = f"deployment_settings_{abs(hash(path))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(module_name, None)
    return module.Settings


# Checks: each returns a list of problems, empty when the deployment is fine.


def check_schema(deployment: Deployment) -> list[str]:
    compose = interpolate_tree(deployment.compose, deployment.interpolation_variables())
    validator = jsonschema.Draft7Validator(deployment.schema)
    return [
        f"{COMPOSE_FILE} at {'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
        for error in validator.iter_errors(compose)
    ]


def check_required_password(deployment: Deployment) -> list[str]:
    problems = []
    if deployment.env.get("POSTGRES_PASSWORD", EnvEntry("", "")).value != "":
        problems.append(f"{ENV_EXAMPLE_FILE} sets a default POSTGRES_PASSWORD; leave it empty")
    for match in iter_references(deployment.compose):
        if match.group("braced") == "POSTGRES_PASSWORD" and match.group("operator") != ":?":
            problems.append(f"{COMPOSE_FILE} reads {match.group(0)}; use ${{POSTGRES_PASSWORD:?...}} with no default")

    variables = {name: entry.value for name, entry in deployment.env.items()}
    try:
        interpolate_tree(deployment.compose, variables)
    except MissingVariableError:
        return problems
    problems.append(f"{COMPOSE_FILE} starts with an empty POSTGRES_PASSWORD; use ${{POSTGRES_PASSWORD:?...}}")
    return problems


def check_build_files(deployment: Deployment) -> list[str]:
    problems = []
    for name, service in deployment.compose["services"].items():
        build = service.get("build")
        if build is None:
            continue
        if isinstance(build, str):
            build = {"context": build}
        context = deployment.root / build.get("context", ".")
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        if not context.is_dir():
            problems.append(f"service {name}: build context {context} is not a folder")
        elif not dockerfile.is_file():
            problems.append(f"service {name}: Dockerfile {dockerfile} not found")
        elif not (context / ".dockerignore").is_file():
            problems.append(f"service {name}: {context / '.dockerignore'} not found")
    return problems


def check_variables_documented(deployment: Deployment) -> list[str]:
    problems = []
    for match in iter_references(deployment.compose):
        name = match.group("braced") or match.group("named")
        if name not in deployment.env:
            problems.append(f"{COMPOSE_FILE} reads ${{{name}}}, which {ENV_EXAMPLE_FILE} does not list")
    for service_name, service in deployment.compose["services"].items():
        for name in service_environment(service):
            if name not in deployment.env:
                problems.append(f"service {service_name} sets {name}, which {ENV_EXAMPLE_FILE} does not list")
    return problems


def check_env_comments(deployment: Deployment) -> list[str]:
    problems = []
    for name, entry in deployment.env.items():
        if not entry.comment:
            problems.append(f"{ENV_EXAMPLE_FILE}: {name} has no comment line right above it")
        elif not re.search(r"\b(default|required)\b", entry.comment):
            problems.append(
                f"{ENV_EXAMPLE_FILE}: the comment on {name} gives no default and does not say it is required"
            )
    return problems


def check_settings_documented(deployment: Deployment) -> list[str]:
    return [
        f"backend setting {name} ({SETTINGS_FILE}) is missing from {ENV_EXAMPLE_FILE}"
        for name in deployment.settings_names
        if name not in deployment.env
    ]


def check_settings_passed(deployment: Deployment) -> list[str]:
    environment = service_environment(deployment.compose["services"]["backend"])
    return [
        f"service backend does not pass setting {name}, so a value in .env would not reach it"
        for name in deployment.settings_names
        if name not in environment
    ]


def check_compose_defaults(deployment: Deployment) -> list[str]:
    problems = []
    for match in iter_references(deployment.compose):
        name = match.group("braced")
        operator = match.group("operator") or ""
        if not name or not operator.endswith("-") or name not in deployment.env:
            continue
        default = match.group("argument") or ""
        documented = deployment.env[name].value
        if default != documented:
            problems.append(f"{COMPOSE_FILE} defaults {name} to {default!r} but {ENV_EXAMPLE_FILE} has {documented!r}")
    return problems


def check_settings_defaults(deployment: Deployment) -> list[str]:
    """Parse .env.example with the backend's Settings and compare with its defaults."""
    settings_class = load_settings_class(deployment.root)
    values = {
        name: deployment.env[name].value
        for name in deployment.settings_names
        if name in deployment.env and name != "DATABASE_URL"
    }
    with patched_environ(values, removed=["DATABASE_URL"]):
        try:
            settings = settings_class(_env_file=None)
        except ValueError as error:
            return [f"{ENV_EXAMPLE_FILE} values are rejected by the backend settings: {error}"]

    problems = []
    for name, field_info in settings_class.model_fields.items():
        if name.upper() not in values:
            continue
        default = field_info.get_default(call_default_factory=True)
        if getattr(settings, name) != default:
            problems.append(
                f"{ENV_EXAMPLE_FILE} sets {name.upper()}={values[name.upper()]!r}, "
                f"but the backend default is {default!r}"
            )
    return problems


def check_backend_environment_parses(deployment: Deployment) -> list[str]:
    """Load the backend's Settings from the environment that compose gives the backend."""
    settings_class = load_settings_class(deployment.root)
    service = interpolate_tree(deployment.compose["services"]["backend"], deployment.interpolation_variables())
    environment = service_environment(service)
    with patched_environ(environment, removed=deployment.settings_names):
        try:
            settings = settings_class(_env_file=None)
        except ValueError as error:
            return [f"service backend environment is rejected by the backend settings: {error}"]

    variables = deployment.interpolation_variables()
    expected_url = (
        f"postgresql+asyncpg://{variables['POSTGRES_USER']}:{TEST_POSTGRES_PASSWORD}@db:5432/{variables['POSTGRES_DB']}"
    )
    if settings.database_url != expected_url:
        return [f"service backend connects to {settings.database_url!r}, expected {expected_url!r}"]
    return []


def check_secrets_not_literal(deployment: Deployment) -> list[str]:
    problems = []
    for service_name, service in deployment.compose["services"].items():
        for name, value in service_environment(service).items():
            if not SECRET_NAME_PATTERN.search(name):
                continue
            match = INTERPOLATION_PATTERN.fullmatch(value)
            has_literal_default = (
                match is not None and (match.group("operator") or "").endswith("-") and match.group("argument")
            )
            if match is None or has_literal_default:
                problems.append(f"service {service_name} sets secret {name} to {value!r}; read it from .env instead")

    database_url = service_environment(deployment.compose["services"]["backend"]).get("DATABASE_URL", "")
    if "${POSTGRES_PASSWORD:?" not in database_url:
        problems.append("service backend DATABASE_URL must take the password from ${POSTGRES_PASSWORD:?...}")
    return problems


def check_healthchecks(deployment: Deployment) -> list[str]:
    problems = []
    services = deployment.compose["services"]
    for service_name, fragments in REQUIRED_HEALTHCHECK_FRAGMENTS.items():
        healthcheck = services[service_name].get("healthcheck")
        if not healthcheck or healthcheck.get("disable") or "test" not in healthcheck:
            problems.append(f"service {service_name} has no healthcheck")
            continue
        test = healthcheck["test"]
        command = " ".join(test) if isinstance(test, list) else test
        for fragment in fragments:
            if fragment not in command:
                problems.append(f"service {service_name} healthcheck does not use {fragment!r}: {command!r}")
    return problems


def check_dependencies(deployment: Deployment) -> list[str]:
    problems = []
    services = deployment.compose["services"]
    for service_name, dependency in REQUIRED_HEALTHY_DEPENDENCIES:
        depends_on = services[service_name].get("depends_on") or {}
        if isinstance(depends_on, list):
            depends_on = {name: {"condition": "service_started"} for name in depends_on}
        condition = (depends_on.get(dependency) or {}).get("condition")
        if condition != "service_healthy":
            problems.append(
                f"service {service_name} must wait for {dependency} with condition service_healthy, found {condition!r}"
            )
    return problems


def check_ports(deployment: Deployment) -> list[str]:
    problems = []
    services = deployment.compose["services"]
    for service_name, service in services.items():
        for port in service.get("ports") or []:
            if isinstance(port, dict):
                host_ip = port.get("host_ip")
            else:
                parts = str(port).split(":")
                host_ip = parts[0] if len(parts) == 3 else None
            if host_ip != "127.0.0.1":
                problems.append(
                    f"service {service_name} publishes {port!r} beyond the loopback; use 127.0.0.1:HOST:CONTAINER"
                )
    if services["db"].get("ports"):
        problems.append(f"service db publishes {services['db']['ports']!r}; the database must stay unpublished")
    for service_name, container_port in PUBLISHED_PORTS.items():
        published = [str(port) for port in services[service_name].get("ports") or []]
        if f"127.0.0.1:{container_port}:{container_port}" not in published:
            problems.append(f"service {service_name} does not publish 127.0.0.1:{container_port}:{container_port}")
    return problems


def check_restart_policies(deployment: Deployment) -> list[str]:
    services = deployment.compose["services"]
    return [
        f"service {name} has restart {services[name].get('restart')!r}, expected unless-stopped"
        for name in SERVICES_WITH_RESTART
        if services[name].get("restart") != "unless-stopped"
    ]


def check_worker(deployment: Deployment) -> list[str]:
    services = deployment.compose["services"]
    worker, backend = services["worker"], services["backend"]
    problems = []
    if "workers" not in (worker.get("profiles") or []):
        problems.append("service worker must be under the profile workers, so a plain `up` does not start it")
    if worker.get("image") != backend.get("image") or worker.get("build") != backend.get("build"):
        problems.append("service worker must use the image and build of service backend")
    if worker.get("command") != WORKER_COMMAND:
        problems.append(f"service worker runs {worker.get('command')!r}, expected {WORKER_COMMAND!r}")
    if worker.get("ports") or worker.get("container_name"):
        problems.append("service worker sets ports or container_name, so `--scale worker=3` would fail")
    return problems


def check_stop_grace_period(deployment: Deployment) -> list[str]:
    grace_seconds = float(deployment.env["SHUTDOWN_GRACE_SECONDS"].value)
    problems = []
    for name in ["backend", "worker"]:
        # Docker's own default is 10 s when the service sets none.
        period = parse_duration_seconds(deployment.compose["services"][name].get("stop_grace_period", "10s"))
        if period <= grace_seconds:
            problems.append(
                f"service {name} stop_grace_period {period} s must exceed SHUTDOWN_GRACE_SECONDS {grace_seconds} s"
            )
    return problems


def check_images_pinned(deployment: Deployment) -> list[str]:
    problems = []
    for name, instructions in deployment.dockerfiles.items():
        stage_names: set[str] = set()
        for instruction in instructions:
            if instruction.keyword != "FROM":
                continue
            words = [word for word in instruction.arguments.split() if not word.startswith("--")]
            reference = words[0]
            if len(words) >= 3 and words[1].upper() == "AS":
                stage_names.add(words[2])
            if reference in stage_names:
                continue
            problem = image_tag_problem(reference)
            if problem:
                problems.append(f"{DOCKERFILES[name]}: {problem}")
    for name, service in deployment.compose["services"].items():
        if "build" not in service:
            problem = image_tag_problem(service.get("image", ""))
            if problem:
                problems.append(f"service {name}: {problem}")
    return problems


def check_non_root_user(deployment: Deployment) -> list[str]:
    problems = []
    for name, instructions in deployment.dockerfiles.items():
        final_stage = max(instruction.stage for instruction in instructions)
        users = [i.arguments for i in instructions if i.keyword == "USER" and i.stage == final_stage]
        if not users:
            problems.append(f"{DOCKERFILES[name]}: the final stage has no USER, so it runs as root")
            continue
        user = users[-1].split(":")[0]
        if user in {"root", "0"}:
            problems.append(f"{DOCKERFILES[name]}: the final stage runs as {users[-1]!r}; use a non-root user")
    return problems


def check_dockerfile_secrets(deployment: Deployment) -> list[str]:
    problems = []
    for name, instructions in deployment.dockerfiles.items():
        for instruction in instructions:
            if instruction.keyword in {"ENV", "ARG"} and SECRET_NAME_PATTERN.search(instruction.arguments):
                problems.append(
                    f"{DOCKERFILES[name]}: {instruction.keyword} {instruction.arguments!r} puts a secret in the image"
                )
    return problems


def check_dockerignore(deployment: Deployment) -> list[str]:
    return [
        f"{DOCKERIGNORE_FILES[name]} does not exclude {entry}"
        for name, patterns in deployment.dockerignores.items()
        for entry in REQUIRED_DOCKERIGNORE_ENTRIES
        if entry not in patterns
    ]


def check_image_commands(deployment: Deployment) -> list[str]:
    problems = []
    services = deployment.compose["services"]
    backend_command = dockerfile_command(deployment.dockerfiles["backend"])
    if backend_command != BACKEND_COMMAND:
        problems.append(f"{DOCKERFILES['backend']} CMD is {backend_command!r}, expected {BACKEND_COMMAND!r}")
    if services["backend"].get("command", BACKEND_COMMAND) != BACKEND_COMMAND:
        problems.append(f"service backend command is {services['backend']['command']!r}, expected {BACKEND_COMMAND!r}")
    joined = " ".join(backend_command) if isinstance(backend_command, list) else str(backend_command)
    for command in [MIGRATE_COMMAND, SERVE_COMMAND]:
        if command not in joined:
            problems.append(f"{DOCKERFILES['backend']} CMD does not run {command!r}")

    frontend_command = dockerfile_command(deployment.dockerfiles["frontend"])
    if frontend_command != FRONTEND_COMMAND:
        problems.append(f"{DOCKERFILES['frontend']} CMD is {frontend_command!r}, expected {FRONTEND_COMMAND!r}")
    if services["frontend"].get("command", FRONTEND_COMMAND) != FRONTEND_COMMAND:
        problems.append(
            f"service frontend command is {services['frontend']['command']!r}, expected {FRONTEND_COMMAND!r}"
        )
    start_script = deployment.package.get("scripts", {}).get("start")
    if start_script != " ".join(FRONTEND_COMMAND):
        problems.append(
            f"{FRONTEND_PACKAGE_FILE} start script is {start_script!r}, "
            f"but the image runs {' '.join(FRONTEND_COMMAND)!r}"
        )
    return problems


def check_startup_code(deployment: Deployment) -> list[str]:
    """Check that the end-to-end tests start the servers with the images' commands.

    NOTE: the match is textual and over all start-up sources together. A call
    that keeps the program in a constant and the arguments elsewhere, such as
    `execFileSync(BACKEND_ALEMBIC, ['upgrade', 'head'])`, does not match, so
    each command needs one source that writes it out in one place.
    """
    sources = deployment.startup_sources
    searched = ", ".join(STARTUP_SOURCE_GLOBS)
    problems = []
    accepted_forms = {
        MIGRATE_COMMAND: [MIGRATE_COMMAND],
        SERVE_COMMAND: [SERVE_COMMAND],
        # The Playwright set-up may call the server output or the start script,
        # which check_image_commands ties to the same command.
        " ".join(FRONTEND_COMMAND): [FRONTEND_COMMAND[1], "npm run start", "npm start"],
    }
    for command, variants in accepted_forms.items():
        if not any(contains_command(text, variant) for text in sources.values() for variant in variants):
            problems.append(f"no end-to-end start-up code runs {command!r}; searched {searched}")
    return problems


def check_nuxt_runtime_config(deployment: Deployment) -> list[str]:
    """Check that each NUXT_* variable has a runtimeConfig key in nuxt.config.ts.

    Nuxt maps NUXT_API_BASE_SERVER to runtimeConfig.apiBaseServer and
    NUXT_PUBLIC_API_BASE to runtimeConfig.public.apiBase, and ignores a
    variable whose key is not declared.
    """
    problems = []
    environment = service_environment(deployment.compose["services"]["frontend"])
    for name in environment:
        if not name.startswith("NUXT_"):
            continue
        words = name.removeprefix("NUXT_").removeprefix("PUBLIC_").lower().split("_")
        key = words[0] + "".join(word.capitalize() for word in words[1:])
        if not re.search(rf"\b{key}\s*:", deployment.nuxt_config):
            problems.append(f"{NUXT_CONFIG_FILE} declares no runtimeConfig key {key} for {name}")
    return problems


CHECKS: dict[str, Callable[[Deployment], list[str]]] = {
    "schema": check_schema,
    "required_password": check_required_password,
    "build_files": check_build_files,
    "variables_documented": check_variables_documented,
    "env_comments": check_env_comments,
    "settings_documented": check_settings_documented,
    "settings_passed": check_settings_passed,
    "compose_defaults": check_compose_defaults,
    "settings_defaults": check_settings_defaults,
    "backend_environment_parses": check_backend_environment_parses,
    "secrets_not_literal": check_secrets_not_literal,
    "healthchecks": check_healthchecks,
    "dependencies": check_dependencies,
    "ports": check_ports,
    "restart_policies": check_restart_policies,
    "worker": check_worker,
    "stop_grace_period": check_stop_grace_period,
    "images_pinned": check_images_pinned,
    "non_root_user": check_non_root_user,
    "dockerfile_secrets": check_dockerfile_secrets,
    "dockerignore": check_dockerignore,
    "image_commands": check_image_commands,
    "startup_code": check_startup_code,
    "nuxt_runtime_config": check_nuxt_runtime_config,
}


# Tests of the real files


@pytest.fixture(scope="module")
def deployment() -> Deployment:
    return load_deployment(REPO_ROOT)


@pytest.mark.parametrize("check_name", list(CHECKS))
def test_deployment_check_passes(deployment: Deployment, check_name: str) -> None:
    problems = CHECKS[check_name](deployment)

    assert problems == []


def test_schema_copy_names_its_source() -> None:
    note = (REPO_ROOT / "backend/tests/schemas/README.md").read_text()

    assert "compose-spec/compose-spec" in note
    assert "170098ba07d9f53c383a41bfd4c5166b0a4529a6" in note


def test_interpolate_handles_compose_forms() -> None:
    variables = {"SET": "value", "EMPTY": ""}

    assert interpolate("${SET}-$SET-$${SET}", variables) == "value-value-${SET}"
    assert interpolate("${EMPTY:-fallback}|${EMPTY-fallback}|${UNSET-fallback}", variables) == "fallback||fallback"
    with pytest.raises(MissingVariableError, match="EMPTY"):
        interpolate("${EMPTY:?set EMPTY}", variables)
    assert interpolate("${EMPTY?set EMPTY}", variables) == ""


def test_parse_dockerfile_joins_continuations() -> None:
    text = "# comment\nFROM a:1 AS build\nRUN one \\\n    && two\nFROM b:2\nUSER app\n"

    instructions = parse_dockerfile(text)

    assert [(i.keyword, i.stage) for i in instructions] == [("FROM", 0), ("RUN", 0), ("FROM", 1), ("USER", 1)]
    assert instructions[1].arguments == "one && two"


# Tests on broken copies: each case edits one file of a copy in a temporary
# folder and expects one check to report it. `old` must occur in the file, so
# that a case cannot pass because its edit did nothing.


@dataclass
class BrokenCase:
    check_name: str
    path: str
    old: str
    new: str


BROKEN_CASES = {
    "schema_unknown_key": BrokenCase(
        "schema",
        COMPOSE_FILE,
        "    stop_grace_period: 20s\n\n  worker:",
        "    stop_grace_period: 20s\n    restart_delay: 5s\n\n  worker:",
    ),
    "schema_ports_not_list": BrokenCase(
        "schema", COMPOSE_FILE, 'ports:\n      - "127.0.0.1:3000:3000"', 'ports: "127.0.0.1:3000:3000"'
    ),
    "password_default_in_compose": BrokenCase(
        "required_password",
        COMPOSE_FILE,
        "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD in .env}",
        "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:-postgres}",
    ),
    "password_default_in_env_example": BrokenCase(
        "required_password", ENV_EXAMPLE_FILE, "POSTGRES_PASSWORD=\n", "POSTGRES_PASSWORD=postgres\n"
    ),
    "build_context_missing": BrokenCase(
        "build_files", COMPOSE_FILE, "context: ./frontend", "context: ./frontend-missing"
    ),
    "dockerfile_missing": BrokenCase(
        "build_files",
        COMPOSE_FILE,
        "context: ./frontend\n      dockerfile: Dockerfile",
        "context: ./frontend\n      dockerfile: Dockerfile.missing",
    ),
    "variable_undocumented": BrokenCase(
        "variables_documented", COMPOSE_FILE, "${LOG_LEVEL:-INFO}", "${LOG_LEVEL_NAME:-INFO}"
    ),
    "environment_undocumented": BrokenCase(
        "variables_documented",
        COMPOSE_FILE,
        "NUXT_API_BASE_SERVER: http://backend:8000",
        "NUXT_API_BASE_SERVER: http://backend:8000\n      NUXT_PUBLIC_THEME: dark",
    ),
    "env_comment_missing": BrokenCase(
        "env_comments", ENV_EXAMPLE_FILE, "# Runs a task gets before it is marked failed for good (default 3).\n", ""
    ),
    "env_comment_without_default": BrokenCase(
        "env_comments", ENV_EXAMPLE_FILE, "in milliseconds (default 2000).", "in milliseconds."
    ),
    "setting_missing_from_env_example": BrokenCase(
        "settings_documented", ENV_EXAMPLE_FILE, "\nLEASE_SECONDS=30\n", "\n"
    ),
    "setting_added_to_settings": BrokenCase(
        "settings_documented",
        SETTINGS_FILE,
        "    log_level: str",
        "    trace_sample_rate: float = 0.0\n    log_level: str",
    ),
    "setting_not_passed": BrokenCase(
        "settings_passed", COMPOSE_FILE, "  MAX_PENDING_TASKS: ${MAX_PENDING_TASKS:-100000}\n", ""
    ),
    "compose_default_differs": BrokenCase("compose_defaults", COMPOSE_FILE, "${MAX_ATTEMPTS:-3}", "${MAX_ATTEMPTS:-5}"),
    "env_example_default_differs": BrokenCase(
        "settings_defaults", ENV_EXAMPLE_FILE, "WORKER_CONCURRENCY=200", "WORKER_CONCURRENCY=50"
    ),
    "env_example_value_invalid": BrokenCase(
        "settings_defaults",
        ENV_EXAMPLE_FILE,
        'CORS_ORIGINS=\'["http://localhost:3000","http://127.0.0.1:3000"]\'',
        "CORS_ORIGINS=http://localhost:3000",
    ),
    "compose_value_invalid": BrokenCase(
        "backend_environment_parses", COMPOSE_FILE, "${WORKER_ENABLED:-true}", "sometimes"
    ),
    "database_url_wrong_host": BrokenCase("backend_environment_parses", COMPOSE_FILE, "@db:5432/", "@localhost:5432/"),
    "secret_literal": BrokenCase(
        "secrets_not_literal", COMPOSE_FILE, "NUXT_API_TOKEN: ${API_TOKEN:-}", "NUXT_API_TOKEN: hunter2"
    ),
    "secret_literal_default": BrokenCase(
        "secrets_not_literal", COMPOSE_FILE, "  API_TOKEN: ${API_TOKEN:-}", "  API_TOKEN: ${API_TOKEN:-hunter2}"
    ),
    "healthcheck_missing": BrokenCase(
        "healthchecks", COMPOSE_FILE, "    healthcheck:\n      # `$$`", "    x-healthcheck:\n      # `$$`"
    ),
    "healthcheck_wrong_url": BrokenCase(
        "healthchecks", COMPOSE_FILE, "http://127.0.0.1:8000/health", "http://127.0.0.1:8000/"
    ),
    "frontend_waits_for_start_only": BrokenCase(
        "dependencies",
        COMPOSE_FILE,
        'condition: service_healthy\n    healthcheck:\n      test: ["CMD", "node"',
        'condition: service_started\n    healthcheck:\n      test: ["CMD", "node"',
    ),
    "backend_waits_for_start_only": BrokenCase(
        "dependencies",
        COMPOSE_FILE,
        '8000:8000"\n    depends_on:\n      db:\n        condition: service_healthy',
        '8000:8000"\n    depends_on:\n      db:\n        condition: service_started',
    ),
    "worker_waits_for_start_only": BrokenCase(
        "dependencies",
        COMPOSE_FILE,
        "      db:\n        condition: service_healthy\n      # The backend",
        "      db:\n        condition: service_started\n      # The backend",
    ),
    "port_on_all_interfaces": BrokenCase("ports", COMPOSE_FILE, '"127.0.0.1:8000:8000"', '"8000:8000"'),
    "port_on_any_address": BrokenCase("ports", COMPOSE_FILE, '"127.0.0.1:3000:3000"', '"0.0.0.0:3000:3000"'),
    "database_port_published": BrokenCase(
        "ports",
        COMPOSE_FILE,
        "      - db-data:/var/lib/postgresql/data\n",
        '      - db-data:/var/lib/postgresql/data\n    ports:\n      - "127.0.0.1:5432:5432"\n',
    ),
    "worker_restart_missing": BrokenCase(
        "restart_policies",
        COMPOSE_FILE,
        '    restart: unless-stopped\n    command: ["python"',
        '    command: ["python"',
    ),
    "worker_without_profile": BrokenCase("worker", COMPOSE_FILE, '    profiles: ["workers"]\n', ""),
    "worker_with_container_name": BrokenCase(
        "worker", COMPOSE_FILE, '    profiles: ["workers"]\n', '    profiles: ["workers"]\n    container_name: worker\n'
    ),
    "worker_other_image": BrokenCase(
        "worker",
        COMPOSE_FILE,
        "  worker:\n    <<: *backend-image\n",
        "  worker:\n    <<: *backend-image\n    image: task-runner-worker:local\n",
    ),
    "stop_grace_too_short": BrokenCase(
        "stop_grace_period",
        COMPOSE_FILE,
        "    stop_grace_period: 20s\n\n  worker:",
        "    stop_grace_period: 5s\n\n  worker:",
    ),
    "backend_base_latest": BrokenCase(
        "images_pinned", "backend/Dockerfile", "FROM python:3.11.14-slim-bookworm", "FROM python:latest"
    ),
    "frontend_base_untagged": BrokenCase(
        "images_pinned", "frontend/Dockerfile", "FROM node:22.22-bookworm-slim AS build", "FROM node AS build"
    ),
    "postgres_without_version": BrokenCase(
        "images_pinned", COMPOSE_FILE, "image: postgres:16.11-bookworm", "image: postgres:bookworm"
    ),
    "backend_runs_as_root": BrokenCase("non_root_user", "backend/Dockerfile", "USER app\n", "USER root\n"),
    "frontend_without_user": BrokenCase("non_root_user", "frontend/Dockerfile", "USER node\n", ""),
    "secret_in_dockerfile": BrokenCase(
        "dockerfile_secrets", "backend/Dockerfile", "USER app\n", "ENV API_TOKEN=hunter2\nUSER app\n"
    ),
    "dockerignore_keeps_node_modules": BrokenCase("dockerignore", "frontend/.dockerignore", "\nnode_modules\n", "\n"),
    "dockerignore_keeps_venv": BrokenCase("dockerignore", "backend/.dockerignore", "\n.venv\n**/.venv\n", "\n"),
    "backend_cmd_skips_migrations": BrokenCase(
        "image_commands", "backend/Dockerfile", '"alembic upgrade head && exec uvicorn', '"exec uvicorn'
    ),
    "compose_command_differs": BrokenCase("image_commands", COMPOSE_FILE, '--port 8000"]', '--port 8000 --reload"]'),
    "frontend_cmd_differs": BrokenCase(
        "image_commands", "frontend/Dockerfile", '".output/server/index.mjs"', '"server.mjs"'
    ),
    "start_script_differs": BrokenCase(
        "image_commands", FRONTEND_PACKAGE_FILE, '"start": "node .output/server/index.mjs"', '"start": "nuxt preview"'
    ),
    "runtime_config_key_missing": BrokenCase(
        "nuxt_runtime_config",
        COMPOSE_FILE,
        "NUXT_API_BASE_SERVER: http://backend:8000",
        "NUXT_API_BASE_SERVER: http://backend:8000\n      NUXT_PUBLIC_THEME_NAME: ${API_TOKEN:-}",
    ),
}


def copy_deployment(destination: Path) -> None:
    """Copy the files the checks read, so that a case can break its own copy."""
    paths = [
        COMPOSE_FILE,
        ENV_EXAMPLE_FILE,
        SCHEMA_FILE,
        SETTINGS_FILE,
        FRONTEND_PACKAGE_FILE,
        NUXT_CONFIG_FILE,
        *DOCKERFILES.values(),
        *DOCKERIGNORE_FILES.values(),
        *find_startup_sources(REPO_ROOT),
    ]
    for relative in paths:
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO_ROOT / relative, target)


@pytest.mark.parametrize("case_name", list(BROKEN_CASES))
def test_deployment_check_reports_broken_copy(tmp_path: Path, case_name: str) -> None:
    case = BROKEN_CASES[case_name]
    copy_deployment(tmp_path)
    target = tmp_path / case.path
    text = target.read_text()
    assert case.old in text, f"case {case_name}: {case.old!r} not found in {case.path}; update the case"
    target.write_text(text.replace(case.old, case.new, 1))

    problems = CHECKS[case.check_name](load_deployment(tmp_path))

    assert problems, f"check {case.check_name} did not report case {case_name}"


def test_startup_check_reports_missing_code(tmp_path: Path) -> None:
    copy_deployment(tmp_path)
    for relative in find_startup_sources(tmp_path):
        (tmp_path / relative).unlink()

    problems = check_startup_code(load_deployment(tmp_path))

    assert len(problems) == 3


def test_startup_check_accepts_argument_lists() -> None:
    text = "spawn(join(venv, 'bin', 'alembic'), ['upgrade', 'head'])\nrun([python, '-m', 'uvicorn', 'app.main:app'])"

    assert contains_command(text, MIGRATE_COMMAND)
    assert contains_command(text, SERVE_COMMAND)
    assert not contains_command("alembic downgrade head", MIGRATE_COMMAND)


def test_every_check_has_broken_case() -> None:
    covered = {case.check_name for case in BROKEN_CASES.values()} | {"startup_code"}

    assert covered == set(CHECKS)
