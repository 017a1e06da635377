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

DEFINE_CLEANUP_FUNC(struct yajl_val_s, yajl_tree_free)

/* ---- parse ---------------------------------------------------------------- */

/* Parses data into a tree whose root is an object. */
static int parse_root(const char *data, size_t len, size_t max, yajl_val *ret,
                      struct al_error **err)
{
    if (len > max)
        return al_error_set(err, E2BIG, "the document is larger than %zu bytes", max);
    if (memchr(data, '\0', len))
        return al_error_set(err, EINVAL, "the document contains a NUL byte");
    int r = al_json_prescan(data, len, GITHUB_MAX_DEPTH, GITHUB_MAX_VALUES, "the document", err);
    if (r < 0)
        return r;
    char *text = strndup(data, len);
    if (!text)
        return al_error_set(err, ENOMEM, "out of memory");
    char ebuf[256] = "";
    yajl_val root = yajl_tree_parse(text, ebuf, sizeof(ebuf));
    /* the copy may hold a token or a JIT config */
    explicit_bzero(text, len);
    free(text);
    if (!root) {
        /* yajl's message may quote the input: keep only its first line */
        char *nl = strchr(ebuf, '\n');
        if (nl)
            *nl = '\0';
        return al_error_set(err, EINVAL, "not JSON: %s", ebuf[0] ? ebuf : "parse error");
    }
    if (!YAJL_IS_OBJECT(root)) {
        yajl_tree_free(root);
        return al_error_set(err, EINVAL, "expected a JSON object");
    }
    *ret = root;
    return 0;
}

/* ---- tree access --------------------------------------------------------- */

enum str_kind {
    STR_TEXT,  /* printable, spaces allowed */
    STR_WORD,  /* printable, no spaces */
    STR_B64,   /* the standard base64 alphabet */
    STR_LOWER, /* [a-z_] (statuses, actions) */
};

static bool str_ok(const char *s, enum str_kind kind)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (kind) {
        case STR_TEXT:
            if (*p < 0x20 || *p == 0x7f)
                return false;
            break;
        case STR_WORD:
            if (*p <= 0x20 || *p == 0x7f)
                return false;
            break;
        case STR_B64:
            if (!isalnum(*p) && *p != '+' && *p != '/' && *p != '=')
                return false;
            break;
        case STR_LOWER:
            if (!(*p >= 'a' && *p <= 'z') && *p != '_')
                return false;
            break;
        }
    }
    return true;
}

static const char *kind_text(enum str_kind kind)
{
    switch (kind) {
    case STR_TEXT:
        return "printable text";
    case STR_WORD:
        return "printable text without spaces";
    case STR_B64:
        return "base64";
    case STR_LOWER:
        return "lower-case letters and '_'";
    }
    return "text";
}

/* A string value. secret: its content is never echoed (it is not anyway:
 * messages name only the path). */
static int get_str(yajl_val obj, const char *key, const char *path, size_t max, bool required,
                   enum str_kind kind, char **ret, struct al_error **err)
{
    char p[256];
    yajl_val v = NULL;
    int r = al_json_member(obj, key, path, &v, err);
    if (r < 0)
        return r;
    al_json_path(p, sizeof(p), path, key, 0);
    if (!v) {
        if (required)
            return al_json_fail(err, p, "missing");
        *ret = NULL;
        return 0;
    }
    if (!YAJL_IS_STRING(v))
        return al_json_fail(err, p, "expected a string, got %s", al_json_type_name(v));
    const char *s = YAJL_GET_STRING(v);
    size_t n = strlen(s);
    if (n > max)
        return al_json_fail(err, p, "longer than %zu bytes", max);
    if (required && n == 0)
        return al_json_fail(err, p, "empty");
    if (!str_ok(s, kind))
        return al_json_fail(err, p, "expected %s", kind_text(kind));
    char *copy = strdup(s);
    if (!copy)
        return al_error_set(err, ENOMEM, "out of memory");
    *ret = copy;
    return 0;
}

/* An integer in [min, max]; absent (or null) gives 0 unless required. */
static int get_int(yajl_val obj, const char *key, const char *path, int64_t min, int64_t max,
                   bool required, int64_t *ret, struct al_error **err)
{
    char p[256];
    yajl_val v = NULL;
    int r = al_json_member(obj, key, path, &v, err);
    if (r < 0)
        return r;
    al_json_path(p, sizeof(p), path, key, 0);
    if (!v) {
        if (required)
            return al_json_fail(err, p, "missing");
        *ret = 0;
        return 0;
    }
    if (!YAJL_IS_INTEGER(v))
        return al_json_fail(err, p, "expected an integer, got %s", al_json_type_name(v));
    long long x = YAJL_GET_INTEGER(v);
    if (x < min || x > max)
        return al_json_fail(err, p, "expected an integer from %lld to %lld", (long long)min,
                            (long long)max);
    *ret = x;
    return 0;
}

static int get_bool(yajl_val obj, const char *key, const char *path, bool required, bool *ret,
                    struct al_error **err)
{
    char p[256];
    yajl_val v = NULL;
    int r = al_json_member(obj, key, path, &v, err);
    if (r < 0)
        return r;
    al_json_path(p, sizeof(p), path, key, 0);
    if (!v) {
        if (required)
            return al_json_fail(err, p, "missing");
        *ret = false;
        return 0;
    }
    if (!YAJL_IS_TRUE(v) && !YAJL_IS_FALSE(v))
        return al_json_fail(err, p, "expected a boolean, got %s", al_json_type_name(v));
    *ret = YAJL_IS_TRUE(v);
    return 0;
}

static int get_obj(yajl_val obj, const char *key, const char *path, bool required, yajl_val *ret,
                   struct al_error **err)
{
    char p[256];
    yajl_val v = NULL;
    int r = al_json_member(obj, key, path, &v, err);
    if (r < 0)
        return r;
    al_json_path(p, sizeof(p), path, key, 0);
    if (!v) {
        if (required)
            return al_json_fail(err, p, "missing");
        *ret = NULL;
        return 0;
    }
    if (!YAJL_IS_OBJECT(v))
        return al_json_fail(err, p, "expected an object, got %s", al_json_type_name(v));
    *ret = v;
    return 0;
}

static int get_array(yajl_val obj, const char *key, const char *path, size_t max, yajl_val *ret,
                     struct al_error **err)
{
    char p[256];
    yajl_val v = NULL;
    int r = al_json_member(obj, key, path, &v, err);
    if (r < 0)
        return r;
    al_json_path(p, sizeof(p), path, key, 0);
    if (!v)
        return al_json_fail(err, p, "missing");
    if (!YAJL_IS_ARRAY(v))
        return al_json_fail(err, p, "expected an array, got %s", al_json_type_name(v));
    if (v->u.array.len > max)
        return al_json_fail(err, p, "more than %zu entries", max);
    *ret = v;
    return 0;
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

static int parse_labels(yajl_val job, const char *path, struct github_job *j, struct al_error **err)
{
    yajl_val arr = NULL;
    char p[256], q[256];
    int r = get_array(job, "labels", path, GITHUB_MAX_LABELS, &arr, err);
    if (r < 0)
        return r;
    al_json_path(p, sizeof(p), path, "labels", 0);
    size_t n = arr->u.array.len;
    j->labels = calloc(n + 1, sizeof(char *));
    if (!j->labels)
        return al_error_set(err, ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        yajl_val v = arr->u.array.values[i];
        al_json_path(q, sizeof(q), p, NULL, i);
        if (!YAJL_IS_STRING(v))
            return al_json_fail(err, q, "expected a string, got %s", al_json_type_name(v));
        const char *s = YAJL_GET_STRING(v);
        size_t len = strlen(s);
        if (len == 0 || len > GITHUB_MAX_LABEL)
            return al_json_fail(err, q, "expected 1 to %d bytes", GITHUB_MAX_LABEL);
        if (!str_ok(s, STR_TEXT))
            return al_json_fail(err, q, "expected %s", kind_text(STR_TEXT));
        if (!(j->labels[i] = strdup(s)))
            return al_error_set(err, ENOMEM, "out of memory");
        j->n_labels = i + 1;
    }
    return 0;
}

/* The fields of a workflow job object (webhook workflow_job or a REST job). */
static int parse_job_object(yajl_val o, const char *path, struct github_job *j,
                            struct al_error **err)
{
    int r = get_int(o, "id", path, 1, INT64_MAX, true, &j->id, err);
    if (r == 0)
        r = get_int(o, "run_id", path, 1, INT64_MAX, true, &j->run_id, err);
    if (r == 0)
        r = get_str(o, "status", path, 64, true, STR_LOWER, &j->status, err);
    if (r == 0)
        r = get_str(o, "conclusion", path, 64, false, STR_LOWER, &j->conclusion, err);
    if (r == 0)
        r = parse_labels(o, path, j, err);
    if (r == 0)
        r = get_int(o, "runner_id", path, 0, INT64_MAX, false, &j->runner_id, err);
    if (r == 0)
        r = get_str(o, "runner_name", path, GITHUB_MAX_NAME, false, STR_TEXT, &j->runner_name, err);
    if (r == 0)
        r = get_str(o, "name", path, GITHUB_MAX_NAME, false, STR_TEXT, &j->name, err);
    if (r == 0)
        r = get_str(o, "html_url", path, GITHUB_MAX_URL, false, STR_WORD, &j->html_url, err);
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

int github_webhook_parse(const char *data, size_t len, struct github_job **ret,
                         struct al_error **err)
{
    _cleanup_(yajl_tree_freep) yajl_val root = NULL;
    int r = parse_root(data, len, GITHUB_MAX_DOCUMENT, &root, err);
    if (r < 0)
        return r;
    _cleanup_(github_job_freep) struct github_job *j = calloc(1, sizeof(*j));
    if (!j)
        return al_error_set(err, ENOMEM, "out of memory");
    _cleanup_free_ char *action = NULL;
    r = get_str(root, "action", "", 64, true, STR_LOWER, &action, err);
    if (r < 0)
        return r;
    j->action = action_from_string(action);
    yajl_val wj = NULL, repo = NULL, inst = NULL;
    if ((r = get_obj(root, "workflow_job", "", true, &wj, err)) < 0 ||
        (r = parse_job_object(wj, "workflow_job", j, err)) < 0 ||
        (r = get_obj(root, "repository", "", true, &repo, err)) < 0 ||
        (r = get_str(repo, "full_name", "repository", GITHUB_MAX_REPO, true, STR_WORD, &j->repo,
                     err)) < 0 ||
        (r = get_obj(root, "installation", "", false, &inst, err)) < 0)
        return r;
    if (!github_repo_is_valid(j->repo))
        return al_json_fail(err, "repository.full_name", "expected OWNER/NAME");
    if (inst &&
        (r = get_int(inst, "id", "installation", 1, INT64_MAX, true, &j->installation_id, err)) < 0)
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

bool github_delivery_id_valid(const char *s)
{
    size_t n = 0;
    for (const char *p = s; *p; p++, n++) {
        if (!isalnum((unsigned char)*p) && *p != '-')
            return false;
    }
    return n >= 1 && n <= 64;
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
    size_t n = 0;
    for (const char *p = s; *p; p++, n++) {
        if (!isalnum((unsigned char)*p) && *p != '-')
            return false;
    }
    return n >= 1 && n <= 39;
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
    if ((r = get_obj(root, "runner", "", true, &runner, err)) < 0 ||
        (r = get_int(runner, "id", "runner", 1, INT64_MAX, true, &id, err)) < 0 ||
        (r = get_str(root, "encoded_jit_config", "", GITHUB_MAX_JIT, true, STR_B64, &config, err)) <
                0)
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
    _cleanup_(yajl_tree_freep) yajl_val root = NULL;
    int r = parse_root(data, len, GITHUB_MAX_DOCUMENT, &root, err);
    if (r < 0)
        return r;
    struct github_runner_list l = {0};
    yajl_val arr = NULL;
    if ((r = get_int(root, "total_count", "", 0, INT64_MAX, true, &l.total_count, err)) < 0 ||
        (r = get_array(root, "runners", "", GITHUB_MAX_ITEMS, &arr, err)) < 0)
        return r;
    l.v = calloc(arr->u.array.len + 1, sizeof(*l.v));
    if (!l.v)
        return al_error_set(err, ENOMEM, "out of memory");
    for (size_t i = 0; i < arr->u.array.len && r == 0; i++) {
        char p[64];
        al_json_path(p, sizeof(p), "runners", NULL, i);
        yajl_val o = arr->u.array.values[i];
        if (!YAJL_IS_OBJECT(o)) {
            r = al_json_fail(err, p, "expected an object, got %s", al_json_type_name(o));
            break;
        }
        struct github_runner *x = &l.v[i];
        l.n = i + 1;
        r = get_int(o, "id", p, 1, INT64_MAX, true, &x->id, err);
        if (r == 0)
            r = get_str(o, "name", p, GITHUB_MAX_NAME, true, STR_TEXT, &x->name, err);
        if (r == 0)
            r = get_str(o, "status", p, 64, false, STR_LOWER, &x->status, err);
        if (r == 0)
            r = get_bool(o, "busy", p, false, &x->busy, err);
    }
    if (r < 0) {
        github_runner_list_clear(&l);
        return r;
    }
    *ret = l;
    return 0;
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

int github_parse_runs(const char *data, size_t len, struct github_run_list *ret,
                      struct al_error **err)
{
    _cleanup_(yajl_tree_freep) yajl_val root = NULL;
    int r = parse_root(data, len, GITHUB_MAX_DOCUMENT, &root, err);
    if (r < 0)
        return r;
    struct github_run_list l = {0};
    yajl_val arr = NULL;
    if ((r = get_int(root, "total_count", "", 0, INT64_MAX, true, &l.total_count, err)) < 0 ||
        (r = get_array(root, "workflow_runs", "", GITHUB_MAX_ITEMS, &arr, err)) < 0)
        return r;
    l.v = calloc(arr->u.array.len + 1, sizeof(*l.v));
    if (!l.v)
        return al_error_set(err, ENOMEM, "out of memory");
    for (size_t i = 0; i < arr->u.array.len && r == 0; i++) {
        char p[64];
        al_json_path(p, sizeof(p), "workflow_runs", NULL, i);
        yajl_val o = arr->u.array.values[i];
        if (!YAJL_IS_OBJECT(o)) {
            r = al_json_fail(err, p, "expected an object, got %s", al_json_type_name(o));
            break;
        }
        struct github_run *x = &l.v[i];
        l.n = i + 1;
        r = get_int(o, "id", p, 1, INT64_MAX, true, &x->id, err);
        if (r == 0)
            r = get_str(o, "status", p, 64, false, STR_LOWER, &x->status, err);
        if (r == 0)
            r = get_str(o, "updated_at", p, 64, false, STR_WORD, &x->updated_at, err);
    }
    if (r < 0) {
        github_run_list_clear(&l);
        return r;
    }
    *ret = l;
    return 0;
}

void github_job_list_clear(struct github_job_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        github_job_free(l->v[i]);
    free(l->v);
    *l = (struct github_job_list){0};
}

int github_parse_jobs(const char *data, size_t len, struct github_job_list *ret,
                      struct al_error **err)
{
    _cleanup_(yajl_tree_freep) yajl_val root = NULL;
    int r = parse_root(data, len, GITHUB_MAX_DOCUMENT, &root, err);
    if (r < 0)
        return r;
    struct github_job_list l = {0};
    yajl_val arr = NULL;
    if ((r = get_int(root, "total_count", "", 0, INT64_MAX, true, &l.total_count, err)) < 0 ||
        (r = get_array(root, "jobs", "", GITHUB_MAX_ITEMS, &arr, err)) < 0)
        return r;
    l.v = calloc(arr->u.array.len + 1, sizeof(*l.v));
    if (!l.v)
        return al_error_set(err, ENOMEM, "out of memory");
    for (size_t i = 0; i < arr->u.array.len && r == 0; i++) {
        char p[64];
        al_json_path(p, sizeof(p), "jobs", NULL, i);
        yajl_val o = arr->u.array.values[i];
        if (!YAJL_IS_OBJECT(o)) {
            r = al_json_fail(err, p, "expected an object, got %s", al_json_type_name(o));
            break;
        }
        if (!(l.v[i] = calloc(1, sizeof(struct github_job)))) {
            r = al_error_set(err, ENOMEM, "out of memory");
            break;
        }
        l.n = i + 1;
        r = parse_job_object(o, p, l.v[i], err);
    }
    if (r < 0) {
        github_job_list_clear(&l);
        return r;
    }
    *ret = l;
    return 0;
}

int github_parse_job(const char *data, size_t len, struct github_job **ret, struct al_error **err)
{
    _cleanup_(yajl_tree_freep) yajl_val root = NULL;
    int r = parse_root(data, len, GITHUB_MAX_DOCUMENT, &root, err);
    if (r < 0)
        return r;
    _cleanup_(github_job_freep) struct github_job *j = calloc(1, sizeof(*j));
    if (!j)
        return al_error_set(err, ENOMEM, "out of memory");
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
    if ((r = get_str(root, "expires_at", "", 64, true, STR_WORD, &expires, err)) < 0)
        return r;
    int64_t t = 0;
    if (github_parse_time(expires, &t) < 0)
        return al_json_fail(err, "expires_at", "expected YYYY-MM-DDTHH:MM:SSZ");
    if ((r = get_str(root, "token", "", GITHUB_MAX_TOKEN, true, STR_WORD, &token, err)) < 0)
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
    return get_int(root, "id", "", 1, INT64_MAX, true, ret_id, err);
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
