#!/bin/sh
# cohort batch script for Slurm (sbatch). Placeholders: see `cohort.jobs.template`;
# a line whose placeholders are all empty is left out.
#SBATCH --job-name=${name}
#SBATCH --nodes=${nodes}
#SBATCH --ntasks-per-node=${processes_per_node}
#SBATCH --gpus-per-task=${gpus_per_process}
#SBATCH --time=${walltime}
#SBATCH --partition=${queue}
#SBATCH --account=${account}
#SBATCH --chdir=${directory}
#SBATCH --output=${stdout}
#SBATCH --error=${stderr}
${scheduler_options}

${environment}
exec ${command}
