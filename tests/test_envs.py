"""The conda environments the rules name pin exactly what the venv pins."""

import re
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
