#!/usr/bin/env bash
# Billing settings on the local test cluster of start_local_slurm.sh, applied with
# `scontrol reconfigure` (the daemons keep running, jobs are untouched):
#
#   tests/slurm/billing_weights.sh "CPU=1.5,Mem=0.5G,GRES/gpu=7"           # TRESBillingWeights
#   tests/slurm/billing_weights.sh "CPU=1.5,Mem=0.5G,GRES/gpu=7" MAX_TRES  # + PriorityFlags
#   tests/slurm/billing_weights.sh                                         # back to the plain config
#
# It sets TRESBillingWeights on the partition line and PriorityFlags. Weights may name CPU, Mem
# and Node only: without slurmdbd, gres/gpu cannot be a TRES here ("slurmdbd is required to run
# with TRES gres/gpu"), and a weight on a TRES that is not configured kills slurmctld at the
# reconfigure ("failed to parse tres weights str"); such weights are refused before. With no
# argument both are removed, leaving the file exactly as start_local_slurm.sh writes it, so
# that script's next call takes its fast path and other SLURM tests see the cluster unchanged.
# Exit 0 once slurmctld reports the weights; only a file carrying start_local_slurm.sh's marker
# is edited.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARKER="# layerprobe-local-slurm: written by tests/slurm/start_local_slurm.sh"
WEIGHTS="${1:-}"
FLAGS="${2:-}"

die() { echo "billing_weights: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root"
head -n 1 "$CONF" 2>/dev/null | grep -qF "$MARKER" || die "$CONF was not written by start_local_slurm.sh"
IFS=, read -ra items <<<"$WEIGHTS"
for item in "${items[@]}"; do
    [[ "$item" =~ ^([Cc][Pp][Uu]|[Mm][Ee][Mm]|[Nn][Oo][Dd][Ee])=[0-9.eE+-]+[KMGTkmgt]?$ ]] \
        || die "weight '$item': only CPU, Mem and Node weights here (see above)"
done
[[ "$FLAGS" =~ ^[A-Z_,]*$ ]] || die "unexpected characters in flags '$FLAGS'"

tmp="$(mktemp "$CONF.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
grep -v -e '^PriorityFlags=' "$CONF" | sed -E 's/ TRESBillingWeights=[^ ]*//' > "$tmp"
if [ -n "$WEIGHTS" ]; then
    sed -i -E "s|^(PartitionName=.*)$|\1 TRESBillingWeights=${WEIGHTS}|" "$tmp"
fi
if [ -n "$FLAGS" ]; then echo "PriorityFlags=${FLAGS}" >> "$tmp"; fi
chmod 644 "$tmp"
mv "$tmp" "$CONF"
scontrol reconfigure || die "scontrol reconfigure failed"

# slurmctld shows the partition's weights; PriorityFlags it does not show under priority/basic
# (the test checks MAX_TRES through the jobs' billing).
for _ in $(seq 50); do
    partition="$(scontrol show partition -o | head -n 1)"
    if [ -n "$WEIGHTS" ]; then
        grep -q "TRESBillingWeights=${WEIGHTS}\( \|$\)" <<<"$partition" && break
    else
        grep -q "TRESBillingWeights=" <<<"$partition" || break
    fi
    partition=""
    sleep 0.2
done
[ -n "$partition" ] || die "slurmctld does not report TRESBillingWeights '${WEIGHTS}' after the reconfigure"
echo "billing_weights: TRESBillingWeights '${WEIGHTS:-none}', PriorityFlags '${FLAGS:-none}'"
