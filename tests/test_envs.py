"""The conda environments the rules name pin exactly what the venv pins, and hold what
the rules' scripts import."""

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def pins(lines) -> dict[str, str]:
    found = {}
    for line in lines:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)==([^\s#]+).*", line)
        if m:
            found[m[1].lower()] = m[2]
    return found


def test_conda_env_pins_equal_requirements():
    venv = pins((ROOT / "requirements.txt").read_text().splitlines())
    envs = sorted((ROOT / "envs").glob("*.yaml"))
    assert envs
    for env in envs:
        spec = yaml.safe_load(env.read_text())
        pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
        assert all("==" in p for p in pip), f"{env.name}: every pip package is pinned"
        env_pins = pins(pip)
        assert env_pins, env
        for name, version in env_pins.items():
            assert venv.get(name) == version, f"{env.name}: {name}=={version}, venv has " \
                                              f"{venv.get(name)}"


def test_every_rule_names_an_existing_env():
    for smk in (ROOT / "rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text()):
            assert (smk.parent / env).resolve().is_file(), f"{smk.name}: {env}"


def rule_blocks(smk: Path) -> dict[str, str]:
    """Rule (or checkpoint) name -> its text, up to the next top-level line."""
    blocks = re.split(r"^(?:rule|checkpoint)\s+(\w+):", smk.read_text(), flags=re.M)
    return {name: re.split(r"^\S", body, maxsplit=1, flags=re.M)[0]
            for name, body in zip(blocks[1::2], blocks[2::2], strict=True)}


def rule_envs_and_scripts() -> list[tuple[str, Path, Path]]:
    """(rule, env yaml, script) of every rule that runs a script."""
    found = []
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for name, body in rule_blocks(smk).items():
            script = re.search(r'script:\s*\n\s*"([^"]+)"', body)
            if script:
                env = re.search(r'conda:\s*\n\s*"([^"]+)"', body)
                assert env, f"{smk.name}: rule {name} runs a script but names no conda env"
                found.append((name, (smk.parent / env[1]).resolve(),
                              (smk.parent / script[1]).resolve()))
    return found


def soloist_file(module: str) -> Path | None:
    """The source file of a soloist module, or None when ``module`` is not one."""
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imports_of(path: Path) -> set[str]:
    """Modules ``path`` imports anywhere (in functions too: a lazy import still has to
    resolve when its code path runs). ``from soloist import x`` names the submodule x, or
    soloist's own __init__ when x is an attribute of the package."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: only soloist's own modules are packages here
                module = ".".join(filter(None, ["soloist", module]))
            if module != "soloist":
                found.add(module)
                continue
            found |= {f"soloist.{a.name}" if soloist_file(f"soloist.{a.name}")
                      else "soloist.__init__" for a in node.names}
    return found


def third_party_imports(script: Path) -> dict[str, Path]:
    """Top-level third-party module -> a file that imports it, over ``script`` and every
    soloist module it reaches."""
    found: dict[str, Path] = {}
    todo, seen = [script], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in imports_of(path):
            top = module.split(".")[0]
            if top == "soloist":
                # a bare `import soloist` runs only __init__'s top level, which imports nothing
                if module != "soloist" and (source := soloist_file(module)) is not None:
                    todo.append(source)
            elif top not in sys.stdlib_module_names:
                found.setdefault(top, path)
    return found


def normalized(name: str) -> str:
    return name.lower().replace("_", "-")


def env_packages(env: Path) -> set[str]:
    """Normalized names of an env's conda and pip dependencies."""
    deps = yaml.safe_load(env.read_text())["dependencies"]
    specs = [d for d in deps if isinstance(d, str)]
    specs += [p for d in deps if isinstance(d, dict) for p in d.get("pip", [])]
    return {normalized(re.split(r"[\s=<>!~\[;]", s, maxsplit=1)[0]) for s in specs}


def test_third_party_imports_are_in_the_rules_env():
    """Every third-party module a rule's script reaches (through soloist too) is listed in
    the rule's env: an env that misses one fails only when that rule runs under --sdm conda."""
    dists = importlib.metadata.packages_distributions()
    rules = rule_envs_and_scripts()
    assert rules
    missing = []
    for rule, env, script in rules:
        listed = env_packages(env)
        for module, where in sorted(third_party_imports(script).items()):
            candidates = {normalized(d) for d in dists.get(module, [])}
            assert candidates, f"{module} ({where.relative_to(ROOT)}): no installed " \
                               "distribution provides it"
            if not candidates & listed:
                missing.append(f"rule {rule}: {env.name} lacks {'/'.join(sorted(candidates))}"
                               f" (import {module} in {where.relative_to(ROOT)})")
    assert not missing, "\n".join(missing)
