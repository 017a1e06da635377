#include "runner/sources/github_payload.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <yajl/yajl_tree.h>

#include "runner/base/hex.h"
#include "runner/base/hmac.h"
#include "runner/base/json_tree.h"
#include "runner/base/util.h"

/* ---- parse ---------------------------------------------------------------- */

/* Parses data into a tree whose root is an object. */
static int parse_root(const char *data, size_t len, size_t max, yajl_val *ret,
                      struct al_error **err)
{
    yajl_val root = NULL;
    int r = al_json_parse(data, len, max, GITHUB_MAX_DEPTH, GITHUB_MAX_VALUES, "the document",
                          &root, err);
    if (r < 0)
        return r;
    if (!YAJL_IS_OBJECT(root)) {
        yajl_tree_free(root);
        return al_error_set(err, EINVAL, "expected a JSON object");
    }
    *ret = root;
    return 0;
}

/* ---- text checks (al_json_get_string()) ------------------------------------ */

static const char *check_b64(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (!isalnum(*p) && *p != '+' && *p != '/' && *p != '=')
            return "expected base64";
    }
    return NULL;
}

/* statuses, actions */
static const char *check_lower(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (!(*p >= 'a' && *p <= 'z') && *p != '_')
            return "expected lower-case letters and '_'";
    }
    return NULL;
}

static const char *check_label(const char *s)
{
    return *s ? al_json_check_line(s) : "empty";
}

/* ---- jobs ----------------------------------------------------------------- */

struct github_job *github_job_free(struct github_job *j)
{
    if (!j)
        return NULL;
    free(j->status);
    free(j->conclusion);
    strv_free(j->labels);
    free(j->runner_name);
    free(j->name);
    free(j->html_url);
    free(j->repo);
    free(j);
    return NULL;
}

/* The fields of a workflow job object (webhook workflow_job or a REST job). */
static int parse_job_object(yajl_val o, const char *path, struct github_job *j,
                            struct al_error **err)
{
    int r = al_json_get_int(o, "id", path, 1, INT64_MAX, true, &j->id, err);
    if (r == 0)
        r = al_json_get_int(o, "run_id", path, 1, INT64_MAX, true, &j->run_id, err);
    if (r == 0)
        r = al_json_get_string(o, "status", path, 64, true, check_lower, &j->status, err);
    if (r == 0)
        r = al_json_get_string(o, "conclusion", path, 64, false, check_lower, &j->conclusion, err);
    if (r == 0)
        r = al_json_get_strv(o, "labels", path, GITHUB_MAX_LABELS, GITHUB_MAX_LABEL, true,
                             check_label, &j->labels, &j->n_labels, err);
    if (r == 0)
        r = al_json_get_int(o, "runner_id", path, 0, INT64_MAX, false, &j->runner_id, err);
    if (r == 0)
        r = al_json_get_string(o, "runner_name", path, GITHUB_MAX_NAME, false, al_json_check_line,
                               &j->runner_name, err);
    if (r == 0)
        r = al_json_get_string(o, "name", path, GITHUB_MAX_NAME, false, al_json_check_line,
                               &j->name, err);
    if (r == 0)
        r = al_json_get_string(o, "html_url", path, GITHUB_MAX_URL, false, al_json_check_word,
                               &j->html_url, err);
    if (r == 0 && j->runner_name && !*j->runner_name) {
        free(j->runner_name);
        j->runner_name = NULL;
    }
    return r;
}

static enum github_action action_from_string(const char *s)
{
    static const struct {
        const char *name;
        enum github_action a;
    } actions[] = {
            {"queued", GITHUB_ACTION_QUEUED},
            {"in_progress", GITHUB_ACTION_IN_PROGRESS},
            {"completed", GITHUB_ACTION_COMPLETED},
            {"waiting", GITHUB_ACTION_WAITING},
    };
    for (size_t i = 0; i < ARRAY_SIZE(actions); i++) {
        if (streq(s, actions[i].name))
            return actions[i].a;
    }
    return GITHUB_ACTION_OTHER;
}

/* The document's root and an empty job to fill from it; both the caller's. */
static int open_job_document(const char *data, size_t len, yajl_val *ret_root,
                             struct github_job **ret_job, struct al_error **err)
{
    _cleanup_(yajl_tree_freep) yajl_val root = NULL;
    int r = parse_root(data, len, GITHUB_MAX_DOCUMENT, &root, err);
    if (r < 0)
        return r;
    struct github_job *j = calloc(1, sizeof(*j));
    if (!j)
        return al_error_set(err, ENOMEM, "out of memory");
    *ret_root = TAKE_PTR(root);
    *ret_job = j;
    return 0;
}

int github_webhook_parse(const char *data, size_t len, struct github_job **ret,
                         struct al_error **err)
{
    _cleanup_(yajl_tree_freep) yajl_val root = NULL;
    _cleanup_(github_job_freep) struct github_job *j = NULL;
    int r = open_job_document(data, len, &root, &j, err);
    if (r < 0)
        return r;
    _cleanup_free_ char *action = NULL;
    r = al_json_get_string(root, "action", "", 64, true, check_lower, &action, err);
    if (r < 0)
        return r;
    j->action = action_from_string(action);
    yajl_val wj = NULL, repo = NULL, inst = NULL;
    if ((r = al_json_get_object(root, "workflow_job", "", true, &wj, err)) < 0 ||
        (r = parse_job_object(wj, "workflow_job", j, err)) < 0 ||
        (r = al_json_get_object(root, "repository", "", true, &repo, err)) < 0 ||
        (r = al_json_get_string(repo, "full_name", "repository", GITHUB_MAX_REPO, true,
                                al_json_check_word, &j->repo, err)) < 0 ||
        (r = al_json_get_object(root, "installation", "", false, &inst, err)) < 0)
        return r;
    if (!github_repo_is_valid(j->repo))
        return al_json_fail(err, "repository.full_name", "expected OWNER/NAME");
    if (inst && (r = al_json_get_int(inst, "id", "installation", 1, INT64_MAX, true,
                                     &j->installation_id, err)) < 0)
        return r;
    *ret = TAKE_PTR(j);
    return 0;
}

/* ---- signature, names, labels ---------------------------------------------- */

bool github_signature_valid(const void *secret, size_t secret_len, const void *body, size_t len,
                            const char *header)
{
    static const char prefix[] = "sha256=";
    if (!header || strncmp(header, prefix, sizeof(prefix) - 1) != 0)
        return false;
    const char *hex = header + sizeof(prefix) - 1;
    if (strlen(hex) != 2 * AL_SHA256_DIGEST_SIZE)
        return false;
    uint8_t given[AL_SHA256_DIGEST_SIZE];
    if (al_hex_decode(hex, given, sizeof(given)) < 0)
        return false;
    uint8_t want[AL_SHA256_DIGEST_SIZE];
    al_hmac_sha256(secret, secret_len, body, len, want);
    bool ok = al_consttime_equal(want, sizeof(want), given, sizeof(given));
    explicit_bzero(want, sizeof(want));
    return ok;
}

/* 1 to max letters, digits and dashes. */
static bool alnum_dash_is_valid(const char *s, size_t max)
{
    size_t n = 0;
    for (const char *p = s; *p; p++, n++) {
        if (!isalnum((unsigned char)*p) && *p != '-')
            return false;
    }
    return n >= 1 && n <= max;
}

bool github_delivery_id_valid(const char *s)
{
    return alnum_dash_is_valid(s, 64);
}

bool github_labels_match(char *const *job_labels, size_t n_job, char *const *pool_labels,
                         size_t n_pool)
{
    if (n_job == 0)
        return false;
    for (size_t i = 0; i < n_job; i++) {
        bool found = false;
        for (size_t k = 0; k < n_pool && !found; k++)
            found = strcasecmp(job_labels[i], pool_labels[k]) == 0;
        if (!found)
            return false;
    }
    return true;
}

bool github_login_is_valid(const char *s)
{
    return alnum_dash_is_valid(s, 39);
}

bool github_repo_is_valid(const char *s)
{
    const char *slash = strchr(s, '/');
    if (!slash || slash == s)
        return false;
    size_t olen = (size_t)(slash - s);
    if (olen > 39)
        return false;
    for (size_t i = 0; i < olen; i++) {
        if (!isalnum((unsigned char)s[i]) && s[i] != '-')
            return false;
    }
    const char *name = slash + 1;
    size_t n = 0;
    for (const char *p = name; *p; p++, n++) {
        if (!isalnum((unsigned char)*p) && *p != '.' && *p != '_' && *p != '-')
            return false;
    }
    return n >= 1 && n <= 100 && !streq(name, ".") && !streq(name, "..");
}

/* ---- REST answers ---------------------------------------------------------- */

int github_parse_jitconfig(const char *data, size_t len, int64_t *ret_runner_id, char **ret_config,
                           struct al_error **err)
{
    _cleanup_(yajl_tree_freep) yajl_val root = NULL;
    int r = parse_root(data, len, GITHUB_MAX_DOCUMENT, &root, err);
    if (r < 0)
        return r;
    yajl_val runner = NULL;
    int64_t id = 0;
    char *config = NULL;
    if ((r = al_json_get_object(root, "runner", "", true, &runner, err)) < 0 ||
        (r = al_json_get_int(runner, "id", "runner", 1, INT64_MAX, true, &id, err)) < 0 ||
        (r = al_json_get_string(root, "encoded_jit_config", "", GITHUB_MAX_JIT, true, check_b64,
                                &config, err)) < 0)
        return r;
    if (strlen(config) < 8) {
        explicit_bzero(config, strlen(config));
        free(config);
        return al_json_fail(err, "encoded_jit_config", "shorter than 8 bytes");
    }
    /* yajl's copy of the value goes with the tree: wipe it first */
    yajl_val v = NULL;
    if (al_json_member(root, "encoded_jit_config", "", &v, NULL) == 0 && v && YAJL_IS_STRING(v))
        explicit_bzero(v->u.string, strlen(v->u.string));
    *ret_runner_id = id;
    *ret_config = config;
    return 0;
}

/* The list answers, {"total_count": N, "KEY": [objects]}: parse_item fills
 * each of the items (item_size bytes each, zeroed) from its object. *ret_v
 * and *ret_n are written even on failure: the *ret_n items begun, for the
 * caller's clear function. */
static int parse_list(const char *data, size_t len, const char *key, size_t item_size,
                      int (*parse_item)(yajl_val o, const char *path, void *item,
                                        struct al_error **err),
                      int64_t *ret_total, void **ret_v, size_t *ret_n, struct al_error **err)
{
    _cleanup_(yajl_tree_freep) yajl_val root = NULL;
    int r = parse_root(data, len, GITHUB_MAX_DOCUMENT, &root, err);
    if (r < 0)
        return r;
    yajl_val arr = NULL;
    if ((r = al_json_get_int(root, "total_count", "", 0, INT64_MAX, true, ret_total, err)) < 0 ||
        (r = al_json_get_array(root, key, "", GITHUB_MAX_ITEMS, true, &arr, err)) < 0)
        return r;
    char *v = calloc(arr->u.array.len + 1, item_size);
    if (!v)
        return al_error_set(err, ENOMEM, "out of memory");
    *ret_v = v;
    for (size_t i = 0; i < arr->u.array.len; i++) {
        char p[64];
        yajl_val o;
        if ((r = al_json_element_object(arr, i, key, p, sizeof(p), &o, err)) < 0)
            return r;
        *ret_n = i + 1;
        if ((r = parse_item(o, p, v + i * item_size, err)) < 0)
            return r;
    }
    return 0;
}

/* parse_list() into *ret, a list struct with v, n and total_count; clear()
 * frees what was parsed when it fails. Evaluates to 0 or the error. */
#define PARSE_LIST_INTO(data, len, key, parse_item, clear, ret, err)                            \
    ({                                                                                          \
        __typeof__(*(ret)) _l = {0};                                                            \
        void *_v = NULL;                                                                        \
        int _r = parse_list((data), (len), (key), sizeof(*_l.v), (parse_item), &_l.total_count, \
                            &_v, &_l.n, (err));                                                 \
        _l.v = _v;                                                                              \
        if (_r < 0)                                                                             \
            clear(&_l);                                                                         \
        else                                                                                    \
            *(ret) = _l;                                                                        \
        _r < 0 ? _r : 0;                                                                        \
    })

static int parse_runner(yajl_val o, const char *p, void *item, struct al_error **err)
{
    struct github_runner *x = item;
    int r;
    if ((r = al_json_get_int(o, "id", p, 1, INT64_MAX, true, &x->id, err)) < 0 ||
        (r = al_json_get_string(o, "name", p, GITHUB_MAX_NAME, true, al_json_check_line, &x->name,
                                err)) < 0 ||
        (r = al_json_get_string(o, "status", p, 64, false, check_lower, &x->status, err)) < 0)
        return r;
    return al_json_get_bool(o, "busy", p, false, &x->busy, err);
}

void github_runner_list_clear(struct github_runner_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].name);
        free(l->v[i].status);
    }
    free(l->v);
    *l = (struct github_runner_list){0};
}

int github_parse_runners(const char *data, size_t len, struct github_runner_list *ret,
                         struct al_error **err)
{
    return PARSE_LIST_INTO(data, len, "runners", parse_runner, github_runner_list_clear, ret, err);
}

void github_run_list_clear(struct github_run_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].status);
        free(l->v[i].updated_at);
    }
    free(l->v);
    *l = (struct github_run_list){0};
}

static int parse_run(yajl_val o, const char *p, void *item, struct al_error **err)
{
    struct github_run *x = item;
    int r;
    if ((r = al_json_get_int(o, "id", p, 1, INT64_MAX, true, &x->id, err)) < 0 ||
        (r = al_json_get_string(o, "status", p, 64, false, check_lower, &x->status, err)) < 0)
        return r;
    return al_json_get_string(o, "updated_at", p, 64, false, al_json_check_word, &x->updated_at,
                              err);
}

int github_parse_runs(const char *data, size_t len, struct github_run_list *ret,
                      struct al_error **err)
{
    return PARSE_LIST_INTO(data, len, "workflow_runs", parse_run, github_run_list_clear, ret, err);
}

void github_job_list_clear(struct github_job_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        github_job_free(l->v[i]);
    free(l->v);
    *l = (struct github_job_list){0};
}

static int parse_list_job(yajl_val o, const char *p, void *item, struct al_error **err)
{
    struct github_job **x = item;
    if (!(*x = calloc(1, sizeof(**x))))
        return al_error_set(err, ENOMEM, "out of memory");
    return parse_job_object(o, p, *x, err);
}

int github_parse_jobs(const char *data, size_t len, struct github_job_list *ret,
                      struct al_error **err)
{
    return PARSE_LIST_INTO(data, len, "jobs", parse_list_job, github_job_list_clear, ret, err);
}

int github_parse_job(const char *data, size_t len, struct github_job **ret, struct al_error **err)
{
    _cleanup_(yajl_tree_freep) yajl_val root = NULL;
    _cleanup_(github_job_freep) struct github_job *j = NULL;
    int r = open_job_document(data, len, &root, &j, err);
    if (r < 0)
        return r;
    r = parse_job_object(root, "", j, err);
    if (r < 0)
        return r;
    *ret = TAKE_PTR(j);
    return 0;
}

int github_parse_time(const char *s, int64_t *ret)
{
    /* exactly YYYY-MM-DDTHH:MM:SSZ */
    static const char shape[] = "dddd-dd-ddTdd:dd:ddZ";
    if (strlen(s) != sizeof(shape) - 1)
        return -EINVAL;
    for (size_t i = 0; shape[i]; i++) {
        if (shape[i] == 'd' ? !isdigit((unsigned char)s[i]) : s[i] != shape[i])
            return -EINVAL;
    }
    struct tm tm = {0};
    int v[6];
    const size_t at[6] = {0, 5, 8, 11, 14, 17};
    const size_t width[6] = {4, 2, 2, 2, 2, 2};
    for (int i = 0; i < 6; i++) {
        int x = 0;
        for (size_t k = 0; k < width[i]; k++)
            x = x * 10 + (s[at[i] + k] - '0');
        v[i] = x;
    }
    if (v[1] < 1 || v[1] > 12 || v[2] < 1 || v[2] > 31 || v[3] > 23 || v[4] > 59 || v[5] > 60)
        return -EINVAL;
    tm.tm_year = v[0] - 1900;
    tm.tm_mon = v[1] - 1;
    tm.tm_mday = v[2];
    tm.tm_hour = v[3];
    tm.tm_min = v[4];
    tm.tm_sec = v[5];
    time_t t = timegm(&tm);
    if (t == (time_t)-1)
        return -EINVAL;
    *ret = (int64_t)t;
    return 0;
}

int github_parse_token(const char *data, size_t len, char **ret_token, int64_t *ret_expires,
                       struct al_error **err)
{
    _cleanup_(yajl_tree_freep) yajl_val root = NULL;
    int r = parse_root(data, len, GITHUB_MAX_DOCUMENT, &root, err);
    if (r < 0)
        return r;
    _cleanup_free_ char *expires = NULL;
    char *token = NULL;
    if ((r = al_json_get_string(root, "expires_at", "", 64, true, al_json_check_word, &expires,
                                err)) < 0)
        return r;
    int64_t t = 0;
    if (github_parse_time(expires, &t) < 0)
        return al_json_fail(err, "expires_at", "expected YYYY-MM-DDTHH:MM:SSZ");
    if ((r = al_json_get_string(root, "token", "", GITHUB_MAX_TOKEN, true, al_json_check_word,
                                &token, err)) < 0)
        return r;
    yajl_val v = NULL;
    if (al_json_member(root, "token", "", &v, NULL) == 0 && v && YAJL_IS_STRING(v))
        explicit_bzero(v->u.string, strlen(v->u.string));
    if (strlen(token) < 8) {
        explicit_bzero(token, strlen(token));
        free(token);
        return al_json_fail(err, "token", "shorter than 8 bytes");
    }
    *ret_token = token;
    *ret_expires = t;
    return 0;
}

int github_parse_installation(const char *data, size_t len, int64_t *ret_id, struct al_error **err)
{
    _cleanup_(yajl_tree_freep) yajl_val root = NULL;
    int r = parse_root(data, len, GITHUB_MAX_DOCUMENT, &root, err);
    if (r < 0)
        return r;
    return al_json_get_int(root, "id", "", 1, INT64_MAX, true, ret_id, err);
}

void github_error_message(const char *data, size_t len, char *buf, size_t size)
{
    if (!size)
        return;
    buf[0] = '\0';
    if (!data || !len || len > (64u << 10))
        return;
    _cleanup_(yajl_tree_freep) yajl_val root = NULL;
    if (parse_root(data, len, 64u << 10, &root, NULL) < 0)
        return;
    yajl_val v = NULL;
    if (al_json_member(root, "message", "", &v, NULL) < 0 || !v || !YAJL_IS_STRING(v))
        return;
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)YAJL_GET_STRING(v); *p && o + 1 < size;
         p++)
        buf[o++] = *p < 0x20 || *p == 0x7f ? '?' : (char)*p;
    buf[o] = '\0';
}
