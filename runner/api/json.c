#include "runner/api/json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_tree.h>

#include "runner/base/buf.h"
#include "runner/base/utf8.h"
#include "runner/base/util.h"
#include "runner/engine/spec.h"
#include "runner/engine/state.h"
#include "runner/base/hardlimits.h"
#include "runner/loop/http_server.h"

#define MAX_TREE_DEPTH 16

yajl_gen json_gen_new(void)
{
    yajl_gen g = yajl_gen_alloc(NULL);
    if (g)
        yajl_gen_config(g, yajl_gen_validate_utf8, 0);
    return g;
}

int json_strn(yajl_gen g, const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    if (al_utf8_is_valid(u, len))
        return yajl_gen_string(g, u, len) == yajl_gen_status_ok ? 0 : -EINVAL;
    /* rare: rebuild with U+FFFD for each bad byte */
    _cleanup_buf_ struct al_buf b = AL_BUF_INIT;
    for (size_t i = 0; i < len;) {
        size_t k = al_utf8_decode(u + i, len - i, NULL);
        int r = k ? al_buf_append(&b, u + i, k) : al_buf_append(&b, "\xef\xbf\xbd", 3);
        if (r < 0)
            return r;
        i += k ? k : 1;
    }
    return yajl_gen_string(g, (const unsigned char *)b.data, b.len) == yajl_gen_status_ok ? 0
                                                                                          : -EINVAL;
}

int json_str(yajl_gen g, const char *s)
{
    return json_strn(g, s, strlen(s));
}

int json_key(yajl_gen g, const char *key)
{
    return yajl_gen_string(g, (const unsigned char *)key, strlen(key)) == yajl_gen_status_ok
                   ? 0
                   : -EINVAL;
}

int json_kv_str(yajl_gen g, const char *key, const char *value)
{
    if (json_key(g, key) < 0)
        return -EINVAL;
    if (!value)
        return yajl_gen_null(g) == yajl_gen_status_ok ? 0 : -EINVAL;
    return json_str(g, value);
}

int json_kv_int(yajl_gen g, const char *key, int64_t value)
{
    if (json_key(g, key) < 0)
        return -EINVAL;
    return yajl_gen_integer(g, value) == yajl_gen_status_ok ? 0 : -EINVAL;
}

int json_kv_uint(yajl_gen g, const char *key, uint64_t value)
{
    /* yajl integers are long long; sizes beyond that do not occur */
    return json_kv_int(g, key, value > INT64_MAX ? INT64_MAX : (int64_t)value);
}

int json_kv_bool(yajl_gen g, const char *key, bool value)
{
    if (json_key(g, key) < 0)
        return -EINVAL;
    return yajl_gen_bool(g, value) == yajl_gen_status_ok ? 0 : -EINVAL;
}

int json_kv_null(yajl_gen g, const char *key)
{
    if (json_key(g, key) < 0)
        return -EINVAL;
    return yajl_gen_null(g) == yajl_gen_status_ok ? 0 : -EINVAL;
}

int json_kv_time(yajl_gen g, const char *key, int64_t ms)
{
    char ms_key[64];
    snprintf(ms_key, sizeof(ms_key), "%s_ms", key);
    if (!ms)
        return json_kv_null(g, key) | json_kv_null(g, ms_key);
    char buf[40];
    al_format_time_ms(ms, buf, sizeof(buf));
    return json_kv_str(g, key, buf) | json_kv_int(g, ms_key, ms);
}

int json_open_map(yajl_gen g)
{
    return yajl_gen_map_open(g) == yajl_gen_status_ok ? 0 : -EINVAL;
}

int json_close_map(yajl_gen g)
{
    return yajl_gen_map_close(g) == yajl_gen_status_ok ? 0 : -EINVAL;
}

int json_open_array(yajl_gen g)
{
    return yajl_gen_array_open(g) == yajl_gen_status_ok ? 0 : -EINVAL;
}

int json_close_array(yajl_gen g)
{
    return yajl_gen_array_close(g) == yajl_gen_status_ok ? 0 : -EINVAL;
}

static int gen_tree(yajl_gen g, yajl_val v, int depth)
{
    if (depth > MAX_TREE_DEPTH)
        return -EINVAL;
    if (YAJL_IS_STRING(v))
        return json_str(g, YAJL_GET_STRING(v));
    if (YAJL_IS_INTEGER(v))
        return yajl_gen_integer(g, YAJL_GET_INTEGER(v)) == yajl_gen_status_ok ? 0 : -EINVAL;
    if (YAJL_IS_NUMBER(v)) {
        const char *num = YAJL_GET_NUMBER(v);
        return yajl_gen_number(g, num, strlen(num)) == yajl_gen_status_ok ? 0 : -EINVAL;
    }
    if (YAJL_IS_TRUE(v) || YAJL_IS_FALSE(v))
        return yajl_gen_bool(g, YAJL_IS_TRUE(v)) == yajl_gen_status_ok ? 0 : -EINVAL;
    if (YAJL_IS_NULL(v))
        return yajl_gen_null(g) == yajl_gen_status_ok ? 0 : -EINVAL;
    int r = 0;
    if (YAJL_IS_OBJECT(v)) {
        r |= json_open_map(g);
        for (size_t i = 0; i < v->u.object.len && !r; i++) {
            r |= json_key(g, v->u.object.keys[i]);
            r |= gen_tree(g, v->u.object.values[i], depth + 1);
        }
        return r | json_close_map(g);
    }
    if (YAJL_IS_ARRAY(v)) {
        r |= json_open_array(g);
        for (size_t i = 0; i < v->u.array.len && !r; i++)
            r |= gen_tree(g, v->u.array.values[i], depth + 1);
        return r | json_close_array(g);
    }
    return -EINVAL;
}

int json_tree_value(yajl_gen g, yajl_val v)
{
    return gen_tree(g, v, 0);
}

int json_raw_value(yajl_gen g, const char *json)
{
    char errbuf[128];
    yajl_val v = yajl_tree_parse(json, errbuf, sizeof(errbuf));
    if (!v)
        return -EINVAL;
    int r = gen_tree(g, v, 0);
    yajl_tree_free(v);
    return r;
}

int json_job(yajl_gen g, const struct store_job *j, bool with_spec)
{
    int r = json_open_map(g);
    r |= json_kv_str(g, "id", j->id);
    r |= json_kv_str(g, "name", j->name);
    r |= json_kv_str(g, "state", job_state_to_string(j->state));
    r |= json_kv_bool(g, "terminal", job_state_is_terminal(j->state));
    r |= json_key(g, "source");
    r |= json_open_map(g);
    const char *src = job_source_type_to_string(j->source_type);
    r |= json_kv_str(g, "type", *src ? src : NULL);
    r |= json_kv_str(g, "ref", j->source_ref);
    r |= json_close_map(g);
    r |= json_kv_str(g, "pool", j->pool);
    r |= json_key(g, "labels");
    r |= json_open_array(g);
    for (char **l = j->labels; l && *l; l++)
        r |= json_str(g, *l);
    r |= json_close_array(g);
    r |= json_kv_time(g, "created", j->created_ms);
    r |= json_kv_time(g, "updated", j->updated_ms);
    if (j->has_exit_code)
        r |= json_kv_int(g, "exit_code", j->exit_code);
    else
        r |= json_kv_null(g, "exit_code");
    r |= json_kv_str(g, "reason", j->reason);
    r |= json_kv_int(g, "attempts", j->attempts);
    r |= json_kv_int(g, "max_attempts", j->max_attempts);
    r |= json_kv_uint(g, "log_bytes", j->log_bytes);
    r |= json_kv_uint(g, "bytes", j->bytes);
    r |= json_key(g, "limits_hit");
    r |= json_open_array(g);
    for (unsigned i = 0; i < AL_LIMIT_COUNT; i++) {
        if (j->limits & (1u << i))
            r |= json_str(g, al_limit_name((enum al_limit)i));
    }
    r |= json_close_array(g);
    if (with_spec && j->spec_json) {
        /* why the job went to its pool, as routing recorded it in the spec */
        char errbuf[64];
        yajl_val spec = yajl_tree_parse(j->spec_json, errbuf, sizeof(errbuf));
        yajl_val why =
                spec ? yajl_tree_get(spec, (const char *[]){"pool_reason", NULL}, yajl_t_string)
                     : NULL;
        r |= json_kv_str(g, "pool_reason", why ? YAJL_GET_STRING(why) : NULL);
        r |= json_key(g, "spec");
        r |= spec ? gen_tree(g, spec, 0) : -EINVAL;
        yajl_tree_free(spec);
    }
    return r | json_close_map(g);
}

int json_event(yajl_gen g, const struct store_event *ev)
{
    int r = json_open_map(g);
    r |= json_kv_int(g, "seq", ev->seq);
    r |= json_kv_str(g, "job", ev->job_id);
    r |= json_kv_str(g, "from", ev->from == JOB_STATE_NONE ? NULL : job_state_to_string(ev->from));
    r |= json_kv_str(g, "to", job_state_to_string(ev->to));
    r |= json_kv_time(g, "at", ev->at_ms);
    r |= json_kv_str(g, "detail", ev->detail);
    return r | json_close_map(g);
}

int json_attempt(yajl_gen g, const struct store_attempt *a)
{
    int r = json_open_map(g);
    r |= json_kv_int(g, "n", a->n);
    r |= json_kv_str(g, "backend", a->backend);
    r |= json_kv_str(g, "vm", a->vm_name);
    r |= json_kv_time(g, "started", a->started_ms);
    r |= json_kv_time(g, "ended", a->ended_ms);
    r |= json_kv_str(g, "result", a->result);
    return r | json_close_map(g);
}

void json_reply(struct api_req *r, int status, yajl_gen g)
{
    const unsigned char *buf = NULL;
    size_t len = 0;
    if (yajl_gen_get_buf(g, &buf, &len) != yajl_gen_status_ok) {
        api_reply_error(r, 500, "internal", "generating the response failed");
        return;
    }
    /* a newline makes curl output and NDJSON-minded tools happy */
    _cleanup_buf_ struct al_buf b = AL_BUF_INIT;
    if (al_buf_append(&b, buf, len) < 0 || al_buf_puts(&b, "\n") < 0) {
        api_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    api_reply(r, status, "application/json", NULL, b.data, b.len);
}

void json_reply_list(struct api_req *r, int status, const struct json_list *l)
{
    _cleanup_json_gen_ yajl_gen g = json_gen_new();
    int rc = g ? 0 : -ENOMEM;
    if (g) {
        rc |= json_open_map(g);
        rc |= json_key(g, l->key);
        rc |= json_open_array(g);
        for (size_t i = 0; i < l->n && !rc; i++)
            rc |= l->item(g, i, l->data);
        rc |= json_close_array(g);
        if (l->tail)
            rc |= l->tail(g, l->data);
        rc |= json_close_map(g);
    }
    json_reply_built(r, status, g, rc);
}

void json_reply_built(struct api_req *r, int status, yajl_gen g, int rc)
{
    if (rc) {
        api_reply_error(r, 500, "internal", "generating the response failed");
        return;
    }
    json_reply(r, status, g);
}
