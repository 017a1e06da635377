#include "runner/sources/github_labels.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "runner/base/util.h"
#include "runner/engine/spec.h"
#include "runner/sources/job_size.h"
#include "images/catalog.h"

static bool has_prefix(const char *s, const char *prefix)
{
    return strncasecmp(s, prefix, strlen(prefix)) == 0;
}

static int parse_cpus(const char *label, const char *n, int *ret, struct al_error **err)
{
    if (!job_size_parse_cpus(n, ret))
        return al_error_set(err, EINVAL,
                            "label \"%s\": expected " GITHUB_LABEL_CPU "N with N from 1 to %d",
                            label, JOB_SPEC_MAX_CPUS);
    return 0;
}

static int parse_memory(const char *label, const char *n, int *ret, struct al_error **err)
{
    if (!job_size_parse_memory(n, ret))
        return al_error_set(err, EINVAL,
                            "label \"%s\": expected " GITHUB_LABEL_MEM "Ng or " GITHUB_LABEL_MEM
                            "Nm (GiB or MiB), %d MiB to %d GiB",
                            label, JOB_SPEC_MIN_MEMORY_MB, JOB_SPEC_MAX_MEMORY_MB / 1024);
    return 0;
}

static int twice(const char *label, const char *what, struct al_error **err)
{
    return al_error_set(err, EINVAL, "label \"%s\": the job names its %s twice", label, what);
}

int github_job_wants_parse(char *const *labels, size_t n, struct github_job_wants *ret,
                           struct al_error **err)
{
    struct github_job_wants w = {0};
    int r = 0;
    w.labels = calloc(n + 1, sizeof(*w.labels));
    if (!w.labels)
        return al_error_set(err, ENOMEM, "out of memory");
    for (size_t i = 0; i < n && r == 0; i++) {
        const char *l = labels[i];
        if (has_prefix(l, GITHUB_LABEL_CPU)) {
            r = w.cpus ? twice(l, "vCPUs", err)
                       : parse_cpus(l, l + strlen(GITHUB_LABEL_CPU), &w.cpus, err);
        } else if (has_prefix(l, GITHUB_LABEL_MEM)) {
            r = w.memory_mb ? twice(l, "memory", err)
                            : parse_memory(l, l + strlen(GITHUB_LABEL_MEM), &w.memory_mb, err);
        } else if (has_prefix(l, GITHUB_LABEL_IMAGE)) {
            const char *name = l + strlen(GITHUB_LABEL_IMAGE);
            if (w.image)
                r = twice(l, "image", err);
            else if (!image_name_is_valid(name))
                r = al_error_set(err, EINVAL,
                                 "label \"%s\": expected " GITHUB_LABEL_IMAGE
                                 "NAME with an image name ([A-Za-z0-9][A-Za-z0-9._-], at most "
                                 "63 characters)",
                                 l);
            else if (!(w.image = strdup(name)))
                r = al_error_set(err, ENOMEM, "out of memory");
        } else if (!(w.labels[w.n_labels++] = strdup(l))) {
            r = al_error_set(err, ENOMEM, "out of memory");
        }
    }
    if (r < 0) {
        github_job_wants_clear(&w);
        return r;
    }
    *ret = w;
    return 0;
}

void github_job_wants_clear(struct github_job_wants *w)
{
    for (size_t i = 0; w->labels && i < w->n_labels; i++)
        free(w->labels[i]);
    free(w->labels);
    free(w->image);
    *w = (struct github_job_wants){0};
}
