#!/bin/bash
# zbatch-local: name=gpu-refine
# zbatch-local: output=/dls/mx/data/mx1234-5/refine/zbatch-golden-0-1.out
# zbatch-local: error=/dls/mx/data/mx1234-5/refine/zbatch-golden-0-1.err
# zbatch-local: workdir=/dls/mx/data/mx1234-5/refine
# zbatch-local: marker=ed62ad96e46372a8bf55d0569dfb8ed5
# zbatch-local: time-limit=43200
# Slurm and SGE tell a job its cpus (SLURM_CPUS_PER_TASK, NSLOTS); the local scheduler does here.
export ZBATCH_CPUS=8
# Record how the job ended, whatever happens, so the outcome never depends on the scheduler.
zbatch_exit_record=/dls/mx/data/mx1234-5/refine/zbatch-golden-0-1.exit
zbatch_signal=""
zbatch_child=""
# Only builtins and `command -p` (the system's default PATH): the job's own PATH does not
# decide what records its outcome.
# shellcheck disable=SC2317  # called through trap, which shellcheck cannot see
# The temporary name is unpredictable and noclobber (set -C, local to the function) refuses
# to write through anything already there, such as a planted symbolic link.
zbatch_write_exit() {
    local rc=$? now tmp -
    set -C
    printf -v now '%(%s)T' -1
    tmp="$zbatch_exit_record.$$.$RANDOM$RANDOM.tmp"
    printf '{"exit_code": %d, "end_time": %s, "signal": "%s", "job_id": "%s"}\n' \
        "$rc" "$now" "$zbatch_signal" "${SLURM_JOB_ID:-${JOB_ID:-${ZBATCH_JOB_ID:-}}}" \
        > "$tmp" \
        && command -p mv -f "$tmp" "$zbatch_exit_record"
}
# shellcheck disable=SC2317
zbatch_forward() {
    zbatch_signal=$1
    if [ -n "$zbatch_child" ]; then kill -s "$1" "$zbatch_child" 2>/dev/null || true; fi
}
trap zbatch_write_exit EXIT
trap 'zbatch_forward TERM' TERM
trap 'zbatch_forward INT' INT
# USR1/USR2 are the schedulers' warnings before a kill (SGE -notify, sbatch --signal): note
# them but let the job run on; `zbatch wrap` passes them to its tool itself.
trap 'zbatch_signal=USR1' USR1
trap 'zbatch_signal=USR2' USR2

cd /dls/mx/data/mx1234-5/refine || exit 1
(
zbatch wrap --wrap generic --recipewrapper /dls/mx/data/mx1234-5/refine/zbatch-golden-0-1.recipewrap.json --transport embedded --embedded-db /var/lib/zbatch/queue.sqlite
) &
zbatch_child=$!
# A trapped signal interrupts wait; keep waiting until the child has really ended.
while :; do
    wait "$zbatch_child"
    rc=$?
    kill -0 "$zbatch_child" 2>/dev/null || break
done
exit "$rc"
