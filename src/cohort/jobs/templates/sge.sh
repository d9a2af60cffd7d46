#!/bin/sh
# cohort batch script for Grid Engine (qsub). Placeholders: see `cohort.jobs.template`;
# a line whose placeholders are all empty is left out. The parallel_environment and
# slots placeholders are set only for jobs of more than one process.
#$ -S /bin/sh
#$ -N ${name}
#$ -wd ${directory}
#$ -o ${stdout}
#$ -e ${stderr}
#$ -q ${queue}
#$ -A ${account}
#$ -l h_rt=${walltime}
#$ -pe ${parallel_environment} ${slots}
${scheduler_options}

${environment}
exec ${command}
