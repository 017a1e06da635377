/* JSON output of the control API (yajl_gen), and the JSON shapes of jobs,
 * events and attempts shared by the endpoints.
 *
 * Strings are written as valid UTF-8 whatever they hold: a byte sequence
 * that is not UTF-8 (a guest's console line in an error reason, say) comes
 * out as U+FFFD rather than failing the response. The helpers return 0 or
 * -ENOMEM/-EINVAL; they are meant to be OR-ed together and checked once.
 */
#ifndef AL_API_JSON_H
#define AL_API_JSON_H

#include <stdbool.h>
#include <stdint.h>
#include <yajl/yajl_gen.h>
#include <yajl/yajl_tree.h>

#include "runner/base/macro.h"
#include "runner/engine/store.h"

struct api_req;

/* A generator with our options; NULL on ENOMEM. */
yajl_gen json_gen_new(void);

static inline void json_gen_freep(yajl_gen *g)
{
    if (*g)
        yajl_gen_free(*g);
}
#define _cleanup_json_gen_ _cleanup_(json_gen_freep)

int json_str(yajl_gen g, const char *s);
int json_strn(yajl_gen g, const char *s, size_t len);
int json_key(yajl_gen g, const char *key);
/* "key": "value", or "key": null when value is NULL */
int json_kv_str(yajl_gen g, const char *key, const char *value);
int json_kv_int(yajl_gen g, const char *key, int64_t value);
int json_kv_uint(yajl_gen g, const char *key, uint64_t value);
int json_kv_bool(yajl_gen g, const char *key, bool value);
int json_kv_null(yajl_gen g, const char *key);
/* "key": "2026-11-29T07:00:00.123Z", "key_ms": 1795..., or null for 0 */
int json_kv_time(yajl_gen g, const char *key, int64_t ms);
int json_open_map(yajl_gen g);
int json_close_map(yajl_gen g);
int json_open_array(yajl_gen g);
int json_close_array(yajl_gen g);

/* Emits a parsed tree as a value (at most 16 levels deep). */
int json_tree_value(yajl_gen g, yajl_val v);

/* Re-emits a JSON document (our own, e.g. a stored job spec) as a value.
 * Returns -EINVAL when it does not parse. */
int json_raw_value(yajl_gen g, const char *json);

/* One job: id, name, state, source, pool, labels, times, exit code, reason,
 * attempts, sizes; with_spec adds the stored spec (no secret values). */
int json_job(yajl_gen g, const struct store_job *j, bool with_spec);

/* One event: seq, job, from, to, at, detail. */
int json_event(yajl_gen g, const struct store_event *ev);

/* One attempt: n, backend, vm, started, ended, result. */
int json_attempt(yajl_gen g, const struct store_attempt *a);

/* A list answer: {"<key>": [item 0 .. item n-1], <the tail's keys>}. */
struct json_list {
    const char *key;
    size_t n;
    int (*item)(yajl_gen g, size_t i, void *data); /* writes item i */
    int (*tail)(yajl_gen g, void *data);           /* NULL, or keys after the array */
    void *data;
};

/* Replies status with the list l, or 500 when building it failed. */
void json_reply_list(struct api_req *r, int status, const struct json_list *l);

/* Sends what g holds as the response body (application/json) with status;
 * a generator error becomes a 500. */
void json_reply(struct api_req *r, int status, yajl_gen g);
/* json_reply() for a document whose building returned rc: nonzero answers
 * 500 instead. */
void json_reply_built(struct api_req *r, int status, yajl_gen g, int rc);

#endif
