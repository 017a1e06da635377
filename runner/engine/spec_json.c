#include "runner/engine/spec.h"

#include <string.h>
#include <yajl/yajl_gen.h>

#include "runner/base/log.h"
#include "runner/base/util.h"

/* ---- serialisation ------------------------------------------------------- */

DEFINE_CLEANUP_FUNC(struct yajl_gen_t, yajl_gen_free)

static int gen_str(yajl_gen g, const char *s)
{
    return yajl_gen_string(g, (const unsigned char *)s, strlen(s)) == yajl_gen_status_ok ? 0
                                                                                         : -EINVAL;
}

/* A string value, with every registered secret masked before JSON escaping
 * (masking the escaped text would miss secrets containing '"' or '\\'). */
static int gen_value(yajl_gen g, const char *s)
{
    size_t len = 0;
    _cleanup_free_ char *masked = al_redact(s, strlen(s), &len);
    if (!masked)
        return -ENOMEM;
    return yajl_gen_string(g, (const unsigned char *)masked, len) == yajl_gen_status_ok ? 0
                                                                                        : -EINVAL;
}

static int gen_kv_str(yajl_gen g, const char *key, const char *value)
{
    if (!value)
        return 0;
    return gen_str(g, key) < 0 ? -EINVAL : gen_value(g, value);
}

static int gen_kv_int(yajl_gen g, const char *key, int64_t value)
{
    if (value == 0)
        return 0;
    if (gen_str(g, key) < 0)
        return -EINVAL;
    return yajl_gen_integer(g, value) == yajl_gen_status_ok ? 0 : -EINVAL;
}

static int gen_strv(yajl_gen g, const char *key, char **v)
{
    if (!v)
        return 0;
    if (gen_str(g, key) < 0 || yajl_gen_array_open(g) != yajl_gen_status_ok)
        return -EINVAL;
    for (char **s = v; *s; s++) {
        if (gen_value(g, *s) < 0)
            return -EINVAL;
    }
    return yajl_gen_array_close(g) == yajl_gen_status_ok ? 0 : -EINVAL;
}

static int gen_spec(yajl_gen g, const struct job_spec *spec)
{
    int r = 0;
    if (yajl_gen_map_open(g) != yajl_gen_status_ok)
        return -EINVAL;
    r |= gen_kv_str(g, "name", spec->name);
    r |= gen_kv_str(g, "image", spec->image);
    r |= gen_strv(g, "command", spec->command);
    r |= gen_kv_str(g, "script", spec->script);
    if (spec->n_env) {
        r |= gen_str(g, "env");
        r |= yajl_gen_map_open(g) != yajl_gen_status_ok;
        for (size_t i = 0; i < spec->n_env; i++)
            r |= gen_kv_str(g, spec->env[i].name, spec->env[i].value ? spec->env[i].value : "");
        r |= yajl_gen_map_close(g) != yajl_gen_status_ok;
    }
    if (spec->n_secret_env) {
        /* names only: secret values never leave the process this way */
        r |= gen_str(g, "secret_env_names");
        r |= yajl_gen_array_open(g) != yajl_gen_status_ok;
        for (size_t i = 0; i < spec->n_secret_env; i++)
            r |= gen_str(g, spec->secret_env[i].name);
        r |= yajl_gen_array_close(g) != yajl_gen_status_ok;
    }
    const struct job_resources *res = &spec->resources;
    if (res->cpus || res->memory_mb || res->disk_gb) {
        r |= gen_str(g, "resources");
        r |= yajl_gen_map_open(g) != yajl_gen_status_ok;
        r |= gen_kv_int(g, "cpus", res->cpus);
        r |= gen_kv_int(g, "memory_mb", res->memory_mb);
        r |= gen_kv_int(g, "disk_gb", res->disk_gb);
        r |= yajl_gen_map_close(g) != yajl_gen_status_ok;
    }
    r |= gen_kv_int(g, "timeout_s", spec->timeout_s);
    r |= gen_strv(g, "artifacts", spec->artifacts);
    r |= gen_strv(g, "labels", spec->labels);
    r |= gen_kv_str(g, "pool", spec->pool);
    r |= gen_kv_str(g, "batch", spec->batch);
    r |= gen_kv_str(g, "pool_reason", spec->pool_reason);
    const struct job_source *src = &spec->source;
    if (src->type != JOB_SOURCE_NONE || src->id || src->url) {
        r |= gen_str(g, "source");
        r |= yajl_gen_map_open(g) != yajl_gen_status_ok;
        if (src->type != JOB_SOURCE_NONE)
            r |= gen_kv_str(g, "type", job_source_type_to_string(src->type));
        r |= gen_kv_str(g, "id", src->id);
        r |= gen_kv_str(g, "url", src->url);
        r |= yajl_gen_map_close(g) != yajl_gen_status_ok;
    }
    r |= gen_kv_int(g, "max_attempts", spec->max_attempts);
    if (spec->inject >= 0)
        r |= gen_kv_str(g, "inject", inject_mode_to_string(spec->inject));
    r |= yajl_gen_map_close(g) != yajl_gen_status_ok;
    return r ? -EINVAL : 0;
}

int job_spec_to_json(const struct job_spec *spec, char **ret_json, size_t *ret_len,
                     struct al_error **err)
{
    _cleanup_(yajl_gen_freep) yajl_gen g = yajl_gen_alloc(NULL);
    if (!g)
        return al_error_set(err, ENOMEM, "serialising job spec: out of memory");
    yajl_gen_config(g, yajl_gen_validate_utf8, 1);
    if (gen_spec(g, spec) < 0)
        return al_error_set(err, EINVAL, "serialising job spec: invalid string in spec");
    const unsigned char *buf = NULL;
    size_t len = 0;
    if (yajl_gen_get_buf(g, &buf, &len) != yajl_gen_status_ok)
        return al_error_set(err, EINVAL, "serialising job spec failed");
    char *json = strndup((const char *)buf, len);
    if (!json)
        return al_error_set(err, ENOMEM, "serialising job spec: out of memory");
    *ret_json = json;
    if (ret_len)
        *ret_len = len;
    return 0;
}
