#!/bin/sh
# cohort batch script for PBS Pro / OpenPBS (qsub). Placeholders: see
# `cohort.jobs.template`; a line whose placeholders are all empty is left out.
# The select placeholder is nodes:ncpus=N:mpiprocs=N[:ngpus=G] (N, G per node).
#PBS -N ${name}
#PBS -l select=${select}
#PBS -l walltime=${walltime}
#PBS -q ${queue}
#PBS -A ${account}
#PBS -o ${stdout}
#PBS -e ${stderr}
${scheduler_options}

cd ${directory_q} || exit 1
${environment}
exec ${command}
