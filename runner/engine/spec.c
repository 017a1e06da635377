#include "runner/engine/spec.h"

#include <inttypes.h>
#include <string.h>

#include "runner/base/log.h"
#include "runner/base/util.h"

/* The parser is spec_parse.c (with the text checks and message quoting of
 * spec_text.c), the serialiser spec_json.c. */

static const char *const source_type_names[] = {
        [JOB_SOURCE_NONE] = "",     [JOB_SOURCE_SPOOL] = "spool",   [JOB_SOURCE_API] = "api",
        [JOB_SOURCE_HTTP] = "http", [JOB_SOURCE_GITLAB] = "gitlab", [JOB_SOURCE_GITHUB] = "github",
        [JOB_SOURCE_CLI] = "cli",
};

const char *job_source_type_to_string(enum job_source_type t)
{
    if ((size_t)t >= ARRAY_SIZE(source_type_names))
        return "";
    return source_type_names[t];
}

int job_source_type_from_string(const char *s, enum job_source_type *ret_type)
{
    if (!s || !*s)
        return -EINVAL;
    for (size_t i = 1; i < ARRAY_SIZE(source_type_names); i++) {
        if (streq(s, source_type_names[i])) {
            *ret_type = (enum job_source_type)i;
            return 0;
        }
    }
    return -EINVAL;
}

/* ---- defaults, secrets, freeing ---------------------------------------- */

int job_spec_apply_defaults(struct job_spec *spec, const struct config *cfg, struct al_error **err)
{
    const struct config_agent *a = &cfg->agent;
    if (!spec->image && a->image && *a->image && !(spec->image = strdup(a->image)))
        return al_error_set(err, ENOMEM, "job spec defaults: out of memory");
    if (spec->timeout_s == 0) {
        if (a->job_timeout_s < 1 || a->job_timeout_s > JOB_SPEC_MAX_TIMEOUT_S)
            return al_error_set(err, EINVAL, "agent.job_timeout: %" PRId64 " s is outside 1..%d",
                                a->job_timeout_s, JOB_SPEC_MAX_TIMEOUT_S);
        spec->timeout_s = a->job_timeout_s;
    }
    if (spec->max_attempts == 0) {
        if (a->max_attempts < 1 || a->max_attempts > JOB_SPEC_MAX_MAX_ATTEMPTS)
            return al_error_set(err, EINVAL, "agent.max_attempts: %d is outside 1..%d",
                                a->max_attempts, JOB_SPEC_MAX_MAX_ATTEMPTS);
        spec->max_attempts = a->max_attempts;
    }
    if (spec->resources.cpus == 0) {
        if (a->job_cpus < 1 || a->job_cpus > JOB_SPEC_MAX_CPUS)
            return al_error_set(err, EINVAL, "agent.job_cpus: %d is outside a job's 1..%d",
                                a->job_cpus, JOB_SPEC_MAX_CPUS);
        spec->resources.cpus = a->job_cpus;
    }
    if (spec->resources.memory_mb == 0) {
        uint64_t mb = a->job_memory >> 20;
        if (mb < JOB_SPEC_MIN_MEMORY_MB || mb > JOB_SPEC_MAX_MEMORY_MB)
            return al_error_set(err, EINVAL, "agent.job_memory: %" PRIu64 " MiB is outside %d..%d",
                                mb, JOB_SPEC_MIN_MEMORY_MB, JOB_SPEC_MAX_MEMORY_MB);
        spec->resources.memory_mb = (int)mb;
    }
    return 0;
}

int job_spec_register_secrets(const struct job_spec *spec, struct al_error **err)
{
    for (size_t i = 0; i < spec->n_secret_env; i++) {
        const char *v = spec->secret_env[i].value;
        if (!v)
            continue;
        int r = al_redact_add(v);
        if (r < 0) {
            for (size_t k = 0; k < i; k++) {
                if (spec->secret_env[k].value)
                    al_redact_remove(spec->secret_env[k].value);
            }
            return al_error_set_errno(err, -r, "registering secret_env.%s with the redactor",
                                      spec->secret_env[i].name);
        }
    }
    return 0;
}

void job_spec_unregister_secrets(const struct job_spec *spec)
{
    for (size_t i = 0; i < spec->n_secret_env; i++) {
        if (spec->secret_env[i].value)
            al_redact_remove(spec->secret_env[i].value);
    }
}

static void env_free(struct job_env_var *vars, size_t n, bool wipe)
{
    for (size_t i = 0; i < n; i++) {
        free(vars[i].name);
        if (wipe && vars[i].value)
            explicit_bzero(vars[i].value, strlen(vars[i].value));
        free(vars[i].value);
    }
    free(vars);
}

struct job_spec *job_spec_free(struct job_spec *spec)
{
    if (!spec)
        return NULL;
    free(spec->name);
    free(spec->image);
    strv_free(spec->command);
    free(spec->script);
    env_free(spec->env, spec->n_env, false);
    env_free(spec->secret_env, spec->n_secret_env, true);
    strv_free(spec->artifacts);
    strv_free(spec->labels);
    free(spec->pool);
    free(spec->batch);
    free(spec->pool_reason);
    free(spec->source.id);
    free(spec->source.url);
    free(spec);
    return NULL;
}
