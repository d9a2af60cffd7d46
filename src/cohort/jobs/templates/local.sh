#!/bin/sh
# cohort job script for local:// and ssh:// services: run by a small runner that
# records its pid and exit status in the job's state folder. Placeholders: see
# `cohort.jobs.template`; a line whose placeholders are all empty is left out.
cd ${directory_q} || exit 1
${environment}
exec ${command}
