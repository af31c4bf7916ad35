# shellcheck shell=bash
# Loads the shared helpers and every per-service library. Needs ZS_LIB.
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$ZS_LIB/common.sh"
# shellcheck source=slurm.sh
source "$ZS_LIB/slurm.sh"
# shellcheck source=sge.sh
source "$ZS_LIB/sge.sh"
# shellcheck source=sshd.sh
source "$ZS_LIB/sshd.sh"
# shellcheck source=rabbitmq.sh
source "$ZS_LIB/rabbitmq.sh"
# shellcheck source=activemq.sh
source "$ZS_LIB/activemq.sh"
