/* How the forges' jobs write a VM size: the one syntax shared by the GitHub
 * label forms (github_labels.h) and the GitLab variables AGENTLAB_CPUS and
 * AGENTLAB_MEMORY (gitlab_job.h), so both read alike. Pure code.
 *
 *   vCPUs:  N, decimal without sign or leading zero, 1 to JOB_SPEC_MAX_CPUS
 *   memory: Ng (GiB) or Nm (MiB), the unit in either case, JOB_SPEC_MIN_MEMORY_MB
 *           to JOB_SPEC_MAX_MEMORY_MB in all
 */
#ifndef AL_JOB_SIZE_H
#define AL_JOB_SIZE_H

#include <stdbool.h>

/* True and *ret set when s is a vCPU count in range. */
bool job_size_parse_cpus(const char *s, int *ret);

/* True and *ret (MiB) set when s is a memory size in range. */
bool job_size_parse_memory(const char *s, int *ret_mb);

#endif
