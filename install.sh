#!/usr/bin/env bash
# Makes .venv/ with the pinned dependencies and installs soloist into it (editable).
# As root it also installs the Debian packages soloist calls: ffmpeg, graphviz (for --dag),
# chromium (the tests open the listening page in it) and SLURM with munge and MariaDB
# (tests/test_slurm.py starts its own one-node cluster on localhost from them).
# SOLOIST_VENV_CACHE=DIR keeps the venv in DIR/<hash of requirements.txt> and links .venv to it.
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" = 0 ] && ! { command -v ffmpeg && command -v dot && command -v chromium &&
    command -v slurmctld && command -v slurmd && command -v sinfo && command -v slurmdbd &&
    command -v munged && command -v mariadbd; } >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    ffmpeg graphviz chromium slurmctld slurmd slurm-client slurmdbd munge mariadb-server >/dev/null
fi
command -v ffmpeg >/dev/null || { echo "install.sh: ffmpeg is missing; install it (e.g. apt-get install ffmpeg)" >&2; exit 1; }

hash=$(sha256sum requirements.txt | cut -c1-16)
venv=.venv
if [ -n "${SOLOIST_VENV_CACHE:-}" ]; then
  venv="$SOLOIST_VENV_CACHE/$hash"
fi
if [ "$(cat "$venv/.soloist-requirements" 2>/dev/null)" != "$hash" ]; then
  rm -rf "$venv"
  "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -r requirements.txt 2> >(grep -v "^WARNING: Location" >&2)
  echo "$hash" > "$venv/.soloist-requirements"
fi
if [ "$venv" != .venv ]; then
  rm -rf .venv
  ln -s "$venv" .venv
fi
.venv/bin/pip install -q --no-deps -e .
echo "soloist installed in .venv ($(.venv/bin/python --version))"
