#!/usr/bin/env bash
# Install a single-node Slurm (slurm-wlm) and munge from the distribution's packages.
# Run as root. Idempotent: does nothing when the commands are already present.
set -euo pipefail

if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    echo "slurm and munge already installed"
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "install_slurm.sh must run as root (it installs packages)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
echo "installed: $(slurmctld -V) and munge $(munged --version 2>&1 | head -n1)"
