/* What a GitHub workflow job asks for through its `runs-on` labels.
 *
 * Three label forms carry a size or an image (README, "Labels that size the
 * VM"); the prefix and the unit are compared without case, as GitHub
 * compares labels:
 *
 *   agentlab-cpu-N       N vCPUs, 1 to JOB_SPEC_MAX_CPUS
 *   agentlab-mem-Ng      N GiB of memory
 *   agentlab-mem-Nm      N MiB of memory; either way JOB_SPEC_MIN_MEMORY_MB
 *                        to JOB_SPEC_MAX_MEMORY_MB in all
 *   agentlab-image-NAME  the VM image NAME (image_name_is_valid(), kept as
 *                        written)
 *
 * N is decimal without sign or leading zero. A label with one of these
 * prefixes but another shape, or a form given twice, is an error: the job
 * gets no runner rather than a VM it did not ask for. Every other label
 * (`self-hosted`, `linux`, the source's and the pools' labels) is kept for
 * routing. Whether the pool allows the size or the image is the engine's
 * decision, not this parser's. Pure code.
 */
#ifndef AL_GITHUB_LABELS_H
#define AL_GITHUB_LABELS_H

#include <stddef.h>

#include "runner/base/error.h"

#define GITHUB_LABEL_CPU   "agentlab-cpu-"
#define GITHUB_LABEL_MEM   "agentlab-mem-"
#define GITHUB_LABEL_IMAGE "agentlab-image-"

struct github_job_wants {
    int cpus;      /* 0 = not asked */
    int memory_mb; /* 0 = not asked */
    char *image;   /* NULL = not asked */
    char **labels; /* the other labels, NULL-terminated, never NULL after a parse */
    size_t n_labels;
};

/* Splits a job's labels (n of them) into what it asks for and the labels
 * left for routing. On success *ret is filled (clear it with
 * github_job_wants_clear()); on failure it is untouched and err names the
 * label, e.g. `label "agentlab-cpu-0": vCPUs must be 1 to 64`. -EINVAL or
 * -ENOMEM. */
int github_job_wants_parse(char *const *labels, size_t n, struct github_job_wants *ret,
                           struct al_error **err);

/* Frees what a parse filled in and zeroes *w. Accepts a zeroed struct. */
void github_job_wants_clear(struct github_job_wants *w);

#endif
