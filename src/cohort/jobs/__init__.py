"""Jobs on batch systems and hosts, one API for all (in the spirit of SAGA and PSI/J).

    >>> from cohort import jobs
    >>> js = jobs.JobService("slurm://")          # local://, ssh://host, sge://, pbs://, slurm+ssh://login
    >>> job = js.submit(jobs.JobDescription(executable="hostname", nodes=1, walltime="00:05:00"))
    >>> job.wait(); job.exit_code

See docs/jobs.md for each scheduler's options and state table.
"""

from .description import JobDescription, JobState
from .service import Job, JobService, Status

__all__ = ["JobDescription", "JobService", "Job", "JobState", "Status"]
