#!/usr/bin/env bash
# Install a single-node Slurm (Debian/Ubuntu packages slurm-wlm and munge). Needs root; does nothing when
# slurmctld is already on PATH.
set -euo pipefail

if command -v slurmctld >/dev/null 2>&1 && command -v slurmdbd >/dev/null 2>&1 && command -v mariadbd >/dev/null 2>&1; then
    echo "slurm already installed: $(command -v slurmctld), with accounting (slurmdbd, mariadbd)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "slurm/install.sh: installing packages needs root (apt-get)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends slurm-wlm slurmdbd mariadb-server munge >/dev/null
echo "slurm installed: $(command -v slurmctld)"
