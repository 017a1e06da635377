#include "runner/sources/github_scaleset_msg.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yajl/yajl_tree.h>

#include "runner/base/json_tree.h"
#include "runner/base/util.h"

static void wipe_str(char *s)
{
    if (s)
        explicit_bzero(s, strlen(s));
    free(s);
}

/* Parses data into a tree whose root has the type want (yajl_t_object or
 * yajl_t_array). The copy yajl reads is wiped: it may hold a token. */
static int parse_doc(const char *data, size_t len, yajl_type want, const char *what, yajl_val *ret,
                     struct al_error **err)
{
    if (len >= 3 && memcmp(data, "\xef\xbb\xbf", 3) == 0) {
        data += 3;
        len -= 3;
    }
    if (len == 0)
        return al_error_set(err, EINVAL, "%s is empty", what);
    yajl_val root = NULL;
    int r = al_json_parse(data, len, SCALESET_MAX_DOCUMENT, SCALESET_MAX_DEPTH, SCALESET_MAX_VALUES,
                          what, &root, err);
    if (r < 0)
        return r;
    if (root->type != want) {
        yajl_tree_free(root);
        return al_error_set(err, EINVAL, "%s: expected a JSON %s", what,
                            want == yajl_t_object ? "object" : "array");
    }
    *ret = root;
    return 0;
}

/* The member whose key equals key without case; NULL when absent or null. */
static int member(yajl_val obj, const char *key, const char *path, yajl_val *ret,
                  struct al_error **err)
{
    yajl_val found = NULL;
    bool seen = false;
    char p[256];
    for (size_t i = 0; i < obj->u.object.len; i++) {
        if (strcasecmp(obj->u.object.keys[i], key) != 0)
            continue;
        if (seen)
            return al_json_fail(err, al_json_path(p, sizeof(p), path, key, 0),
                                "given more than once");
        seen = true;
        found = obj->u.object.values[i];
    }
    *ret = found && !YAJL_IS_NULL(found) ? found : NULL;
    return 0;
}

/* The kinds of value the getters below take. */
enum kind { K_STRING, K_INT, K_OBJECT };

/* Looks up the member key of obj (its path into p), which must be of kind
 * kind: 1 with *ret when it is there, 0 when absent or null and not
 * required, an error otherwise. */
static int present(yajl_val obj, const char *key, const char *path, bool required, enum kind kind,
                   char *p, size_t size, yajl_val *ret, struct al_error **err)
{
    static const char *const names[] = {
            [K_STRING] = "a string", [K_INT] = "an integer", [K_OBJECT] = "an object"};
    int r = member(obj, key, path, ret, err);
    if (r < 0)
        return r;
    al_json_path(p, size, path, key, 0);
    if (!*ret)
        return required ? al_json_fail(err, p, "missing") : 0;
    yajl_val v = *ret;
    bool ok = kind == K_STRING ? YAJL_IS_STRING(v)
              : kind == K_INT  ? YAJL_IS_INTEGER(v)
                               : YAJL_IS_OBJECT(v);
    if (!ok)
        return al_json_fail(err, p, "expected %s, got %s", names[kind], al_json_type_name(v));
    return 1;
}

static bool printable(const char *s, bool spaces)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p == 0x7f || (!spaces && *p == ' '))
            return false;
    }
    return true;
}

/* A string of printable characters (no spaces unless spaces) up to max
 * bytes; absent gives NULL unless required. empty_is_null: "" gives NULL. */
static int get_str(yajl_val obj, const char *key, const char *path, size_t max, bool required,
                   bool spaces, char **ret, struct al_error **err)
{
    char p[256];
    yajl_val v = NULL;
    int r = present(obj, key, path, required, K_STRING, p, sizeof(p), &v, err);
    if (r <= 0) {
        if (r == 0)
            *ret = NULL;
        return r;
    }
    const char *s = YAJL_GET_STRING(v);
    size_t n = strlen(s);
    if (n > max)
        return al_json_fail(err, p, "longer than %zu bytes", max);
    if (n == 0) {
        if (required)
            return al_json_fail(err, p, "empty");
        *ret = NULL;
        return 0;
    }
    if (!printable(s, spaces))
        return al_json_fail(err, p, "expected printable text%s", spaces ? "" : " without spaces");
    char *copy = strdup(s);
    if (!copy)
        return al_error_set(err, ENOMEM, "out of memory");
    *ret = copy;
    return 0;
}

static int get_int(yajl_val obj, const char *key, const char *path, int64_t min, bool required,
                   int64_t *ret, struct al_error **err)
{
    char p[256];
    yajl_val v = NULL;
    int r = present(obj, key, path, required, K_INT, p, sizeof(p), &v, err);
    if (r < 0)
        return r;
    long long x = r ? YAJL_GET_INTEGER(v) : 0;
    if (r && x < min)
        return al_json_fail(err, p, "expected an integer of at least %lld", (long long)min);
    *ret = x;
    return 0;
}

static int get_obj(yajl_val obj, const char *key, const char *path, bool required, yajl_val *ret,
                   struct al_error **err)
{
    char p[256];
    yajl_val v = NULL;
    int r = present(obj, key, path, required, K_OBJECT, p, sizeof(p), &v, err);
    if (r < 0)
        return r;
    *ret = v;
    return 0;
}

static bool url_ok(const char *u)
{
    return strncasecmp(u, "https://", 8) == 0 || strncasecmp(u, "http://", 7) == 0;
}

/* ---- statistics --------------------------------------------------------- */

static int parse_stats(yajl_val root, struct scaleset_stats *ret, struct al_error **err)
{
    yajl_val s = NULL;
    int r = get_obj(root, "statistics", "", true, &s, err);
    if (r < 0)
        return r;
    static const struct {
        const char *key;
        size_t off;
    } keys[] = {
            {"totalAvailableJobs", offsetof(struct scaleset_stats, available)},
            {"totalAcquiredJobs", offsetof(struct scaleset_stats, acquired)},
            {"totalAssignedJobs", offsetof(struct scaleset_stats, assigned)},
            {"totalRunningJobs", offsetof(struct scaleset_stats, running)},
            {"totalRegisteredRunners", offsetof(struct scaleset_stats, registered)},
            {"totalBusyRunners", offsetof(struct scaleset_stats, busy)},
            {"totalIdleRunners", offsetof(struct scaleset_stats, idle)},
    };
    struct scaleset_stats st = {0};
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
        int64_t x = 0;
        if ((r = get_int(s, keys[i].key, "statistics", 0, false, &x, err)) < 0)
            return r;
        *(int64_t *)((char *)&st + keys[i].off) = x;
    }
    *ret = st;
    return 0;
}

/* ---- messages ----------------------------------------------------------- */

static void job_clear(struct scaleset_job *j)
{
    free(j->runner_name);
    free(j->result);
    free(j->job_id);
    free(j->repo);
    free(j->display_name);
    *j = (struct scaleset_job){0};
}

void scaleset_message_clear(struct scaleset_message *m)
{
    for (size_t i = 0; i < m->n_jobs; i++)
        job_clear(&m->jobs[i]);
    free(m->jobs);
    *m = (struct scaleset_message){0};
}

static enum scaleset_job_kind job_kind(const char *t)
{
    if (strcasecmp(t, "JobAvailable") == 0)
        return SCALESET_JOB_AVAILABLE;
    if (strcasecmp(t, "JobAssigned") == 0)
        return SCALESET_JOB_ASSIGNED;
    if (strcasecmp(t, "JobStarted") == 0)
        return SCALESET_JOB_STARTED;
    if (strcasecmp(t, "JobCompleted") == 0)
        return SCALESET_JOB_COMPLETED;
    return SCALESET_JOB_OTHER;
}

static int parse_job(yajl_val o, const char *path, struct scaleset_job *j, struct al_error **err)
{
    if (!YAJL_IS_OBJECT(o))
        return al_json_fail(err, path, "expected an object, got %s", al_json_type_name(o));
    _cleanup_free_ char *type = NULL, *owner = NULL, *repo = NULL;
    int r;
    if ((r = get_str(o, "messageType", path, 64, true, false, &type, err)) < 0)
        return r;
    j->kind = job_kind(type);
    if (j->kind == SCALESET_JOB_OTHER)
        return 0;
    if ((r = get_int(o, "runnerRequestId", path, 1, true, &j->request_id, err)) < 0 ||
        (r = get_str(o, "jobId", path, 256, false, false, &j->job_id, err)) < 0 ||
        (r = get_str(o, "jobDisplayName", path, SCALESET_MAX_NAME, false, true, &j->display_name,
                     err)) < 0 ||
        (r = get_str(o, "ownerName", path, SCALESET_MAX_NAME, false, false, &owner, err)) < 0 ||
        (r = get_str(o, "repositoryName", path, SCALESET_MAX_NAME, false, false, &repo, err)) < 0)
        return r;
    if (owner && repo && asprintf(&j->repo, "%s/%s", owner, repo) < 0) {
        j->repo = NULL;
        return al_error_set(err, ENOMEM, "out of memory");
    }
    if (j->kind == SCALESET_JOB_STARTED || j->kind == SCALESET_JOB_COMPLETED) {
        if ((r = get_int(o, "runnerId", path, 0, false, &j->runner_id, err)) < 0 ||
            (r = get_str(o, "runnerName", path, SCALESET_MAX_NAME, false, false, &j->runner_name,
                         err)) < 0)
            return r;
    }
    if (j->kind == SCALESET_JOB_COMPLETED &&
        (r = get_str(o, "result", path, 64, false, false, &j->result, err)) < 0)
        return r;
    return 0;
}

/* {"count": N, "value": [...]}: *ret_value is the array (NULL when absent
 * and N is 0), at most max long; *ret_root owns it. */
static int parse_list(const char *data, size_t len, const char *what, size_t max,
                      yajl_val *ret_root, yajl_val *ret_value, struct al_error **err)
{
    int r = parse_doc(data, len, yajl_t_object, what, ret_root, err);
    if (r < 0)
        return r;
    int64_t count = 0;
    yajl_val v = NULL;
    if ((r = get_int(*ret_root, "count", "", 0, true, &count, err)) < 0 ||
        (r = member(*ret_root, "value", "", &v, err)) < 0)
        return r;
    if (v && !YAJL_IS_ARRAY(v))
        return al_json_fail(err, "value", "expected an array, got %s", al_json_type_name(v));
    size_t n = v ? v->u.array.len : 0;
    if (n > max)
        return al_json_fail(err, "value", "more than %zu entries", max);
    if ((int64_t)n != count)
        return al_json_fail(err, "count", "does not match the length of value");
    *ret_value = v;
    return 0;
}

/* The job messages of arr (a message's body, or the acquirablejobs list)
 * into m->jobs; on failure m is cleared. */
static int parse_jobs(yajl_val arr, const char *where, struct scaleset_message *m,
                      struct al_error **err)
{
    size_t n = arr->u.array.len;
    if (n > SCALESET_MAX_JOBS)
        return al_json_fail(err, where, "more than %d job messages", SCALESET_MAX_JOBS);
    m->jobs = calloc(n ? n : 1, sizeof(*m->jobs));
    if (!m->jobs)
        return al_error_set(err, ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        char p[64];
        snprintf(p, sizeof(p), "%s[%zu]", where, i);
        int r = parse_job(arr->u.array.values[i], p, &m->jobs[i], err);
        m->n_jobs = i + 1;
        if (r < 0) {
            scaleset_message_clear(m);
            return r;
        }
    }
    return 0;
}

int scaleset_parse_message(const char *data, size_t len, struct scaleset_message *ret,
                           struct al_error **err)
{
    _cleanup_(yajl_tree_freep) yajl_val root = NULL;
    int r = parse_doc(data, len, yajl_t_object, "the message", &root, err);
    if (r < 0)
        return r;
    _cleanup_free_ char *type = NULL;
    struct scaleset_message m = {0};
    if ((r = get_int(root, "messageId", "", 1, true, &m.id, err)) < 0 ||
        (r = get_str(root, "messageType", "", 128, true, false, &type, err)) < 0)
        return r;
    if (strcasecmp(type, "RunnerScaleSetJobMessages") != 0)
        return al_json_fail(err, "messageType", "not RunnerScaleSetJobMessages");
    if ((r = parse_stats(root, &m.stats, err)) < 0)
        return r;
    yajl_val b = NULL;
    if ((r = member(root, "body", "", &b, err)) < 0)
        return r;
    if (b && !YAJL_IS_STRING(b))
        return al_json_fail(err, "body", "expected a string (JSON inside), got %s",
                            al_json_type_name(b));
    const char *text = b ? YAJL_GET_STRING(b) : "";
    if (!*text) {
        *ret = m;
        return 0;
    }
    _cleanup_(yajl_tree_freep) yajl_val arr = NULL;
    if ((r = parse_doc(text, strlen(text), yajl_t_array, "the message body", &arr, err)) < 0)
        return r;
    if ((r = parse_jobs(arr, "body", &m, err)) < 0)
        return r;
    *ret = m;
    return 0;
}

int scaleset_parse_acquirable(const char *data, size_t len, struct scaleset_message *ret,
                              struct al_error **err)
{
    _cleanup_(yajl_tree_freep) yajl_val root = NULL;
    yajl_val v = NULL;
    int r = parse_list(data, len, "the acquirablejobs answer", SCALESET_MAX_JOBS, &root, &v, err);
    if (r < 0)
        return r;
    struct scaleset_message m = {0};
    if (v && (r = parse_jobs(v, "value", &m, err)) < 0)
        return r;
    /* only what can still be acquired counts */
    for (size_t i = 0; i < m.n_jobs; i++)
        if (m.jobs[i].kind != SCALESET_JOB_AVAILABLE)
            m.jobs[i].kind = SCALESET_JOB_OTHER;
    *ret = m;
    return 0;
}

/* ---- sessions ----------------------------------------------------------- */

void scaleset_session_clear(struct scaleset_session *s)
{
    free(s->session_id);
    free(s->mq_url);
    wipe_str(s->mq_token);
    *s = (struct scaleset_session){0};
}

static bool uuid_ok(const char *s)
{
    if (strlen(s) != 36)
        return false;
    bool nonzero = false;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
        } else if (!isxdigit((unsigned char)s[i])) {
            return false;
        } else if (s[i] != '0') {
            nonzero = true;
        }
    }
    return nonzero;
}

/* The string value of key in the tree is wiped (it is a secret). */
static void wipe_member(yajl_val obj, const char *key)
{
    yajl_val v = NULL;
    if (member(obj, key, "", &v, NULL) == 0 && v && YAJL_IS_STRING(v))
        explicit_bzero(v->u.string, strlen(v->u.string));
}

int scaleset_parse_session(const char *data, size_t len, struct scaleset_session *ret,
                           struct al_error **err)
{
    _cleanup_(yajl_tree_freep) yajl_val root = NULL;
    int r = parse_doc(data, len, yajl_t_object, "the session", &root, err);
    if (r < 0)
        return r;
    struct scaleset_session s = {0};
    if ((r = get_str(root, "sessionId", "", 64, true, false, &s.session_id, err)) < 0 ||
        (r = get_str(root, "messageQueueUrl", "", SCALESET_MAX_URL, true, false, &s.mq_url, err)) <
                0 ||
        (r = get_str(root, "messageQueueAccessToken", "", SCALESET_MAX_TOKEN, true, false,
                     &s.mq_token, err)) < 0 ||
        (r = parse_stats(root, &s.stats, err)) < 0)
        goto fail;
    if (!uuid_ok(s.session_id)) {
        r = al_json_fail(err, "sessionId", "expected a UUID other than all zeros");
        goto fail;
    }
    if (!url_ok(s.mq_url)) {
        r = al_json_fail(err, "messageQueueUrl", "expected an http(s) URL");
        goto fail;
    }
    wipe_member(root, "messageQueueAccessToken");
    *ret = s;
    return 0;
fail:
    wipe_member(root, "messageQueueAccessToken");
    scaleset_session_clear(&s);
    return r;
}

/* ---- registration ------------------------------------------------------- */

static int b64url_decode(const char *s, size_t n, char **ret, size_t *ret_len)
{
    char *out = malloc(n * 3 / 4 + 4);
    if (!out)
        return -ENOMEM;
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)s[i], v;
        if (c >= 'A' && c <= 'Z')
            v = c - 'A';
        else if (c >= 'a' && c <= 'z')
            v = c - 'a' + 26;
        else if (c >= '0' && c <= '9')
            v = c - '0' + 52;
        else if (c == '-' || c == '+')
            v = 62;
        else if (c == '_' || c == '/')
            v = 63;
        else if (c == '=' && i + 2 >= n)
            break;
        else {
            free(out);
            return -EINVAL;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (char)((acc >> bits) & 0xff);
        }
    }
    out[o] = '\0';
    *ret = out;
    *ret_len = o;
    return 0;
}

int scaleset_jwt_exp(const char *jwt, int64_t *ret_exp, struct al_error **err)
{
    const char *d1 = strchr(jwt, '.');
    const char *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
    if (!d1 || !d2 || strchr(d2 + 1, '.') || d1 == jwt || d2 == d1 + 1)
        return al_error_set(err, EINVAL, "the token is not a JWT (three parts)");
    for (int part = 0; part < 2; part++) {
        const char *s = part ? d1 + 1 : jwt;
        size_t n = (size_t)((part ? d2 : d1) - s);
        if (n > SCALESET_MAX_TOKEN)
            return al_error_set(err, E2BIG, "the token's JWT is too large");
        _cleanup_free_ char *json = NULL;
        size_t jl = 0;
        int r = b64url_decode(s, n, &json, &jl);
        if (r == -ENOMEM)
            return al_error_set(err, ENOMEM, "out of memory");
        if (r < 0)
            return al_error_set(err, EINVAL, "the token's JWT %s is not base64url",
                                part ? "claims" : "header");
        _cleanup_(yajl_tree_freep) yajl_val o = NULL;
        if ((r = parse_doc(json, jl, yajl_t_object, part ? "the JWT claims" : "the JWT header", &o,
                           err)) < 0)
            return r;
        if (!part) {
            _cleanup_free_ char *alg = NULL;
            if ((r = get_str(o, "alg", "jwt", 16, true, false, &alg, err)) < 0)
                return r;
            continue;
        }
        int64_t exp = 0;
        if ((r = get_int(o, "exp", "jwt", 1, true, &exp, err)) < 0)
            return r;
        *ret_exp = exp;
    }
    return 0;
}

int scaleset_parse_registration(const char *data, size_t len, char **ret_url, char **ret_token,
                                int64_t *ret_exp, struct al_error **err)
{
    _cleanup_(yajl_tree_freep) yajl_val root = NULL;
    int r = parse_doc(data, len, yajl_t_object, "the runner-registration answer", &root, err);
    if (r < 0)
        return r;
    _cleanup_free_ char *url = NULL;
    char *token = NULL;
    int64_t exp = 0;
    if ((r = get_str(root, "url", "", SCALESET_MAX_URL, true, false, &url, err)) < 0 ||
        (r = get_str(root, "token", "", SCALESET_MAX_TOKEN, true, false, &token, err)) < 0)
        goto out;
    if (!url_ok(url)) {
        r = al_json_fail(err, "url", "expected an http(s) URL");
        goto out;
    }
    if ((r = scaleset_jwt_exp(token, &exp, err)) < 0)
        goto out;
    *ret_url = TAKE_PTR(url);
    *ret_token = TAKE_PTR(token);
    *ret_exp = exp;
out:
    wipe_member(root, "token");
    wipe_str(token);
    return r;
}

/* ---- scale sets, groups, runners, jobs ---------------------------------- */

int scaleset_parse_lookup(const char *data, size_t len, int64_t *ret_id, struct al_error **err)
{
    _cleanup_(yajl_tree_freep) yajl_val root = NULL;
    int r = parse_doc(data, len, yajl_t_object, "the lookup answer", &root, err);
    if (r < 0)
        return r;
    int64_t count = 0;
    if ((r = get_int(root, "count", "", 0, true, &count, err)) < 0)
        return r;
    if (count == 0) {
        *ret_id = 0;
        return 0;
    }
    if (count > 1)
        return al_json_fail(err, "count", "more than one match");
    yajl_val v = NULL;
    if ((r = member(root, "value", "", &v, err)) < 0)
        return r;
    if (!v || !YAJL_IS_ARRAY(v) || v->u.array.len != 1)
        return al_json_fail(err, "value", "expected an array of one");
    yajl_val o = v->u.array.values[0];
    if (!YAJL_IS_OBJECT(o))
        return al_json_fail(err, "value[0]", "expected an object");
    int64_t id = 0;
    if ((r = get_int(o, "id", "value[0]", 1, true, &id, err)) < 0)
        return r;
    *ret_id = id;
    return 0;
}

int scaleset_parse_scaleset(const char *data, size_t len, int64_t *ret_id, struct al_error **err)
{
    _cleanup_(yajl_tree_freep) yajl_val root = NULL;
    int r = parse_doc(data, len, yajl_t_object, "the scale set", &root, err);
    if (r < 0)
        return r;
    int64_t id = 0;
    if ((r = get_int(root, "id", "", 1, true, &id, err)) < 0)
        return r;
    *ret_id = id;
    return 0;
}

int scaleset_parse_jitconfig(const char *data, size_t len, int64_t *ret_runner_id,
                             char **ret_config, struct al_error **err)
{
    _cleanup_(yajl_tree_freep) yajl_val root = NULL;
    int r = parse_doc(data, len, yajl_t_object, "the generatejitconfig answer", &root, err);
    if (r < 0)
        return r;
    yajl_val runner = NULL;
    int64_t id = 0;
    char *config = NULL;
    if ((r = get_obj(root, "runner", "", true, &runner, err)) < 0 ||
        (r = get_int(runner, "id", "runner", 1, true, &id, err)) < 0 ||
        (r = get_str(root, "encodedJITConfig", "", SCALESET_MAX_JIT, true, false, &config, err)) <
                0)
        goto out;
    if (strspn(config, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_") !=
                strlen(config) ||
        strlen(config) < 8) {
        r = al_json_fail(err, "encodedJITConfig", "expected base64 of at least 8 bytes");
        goto out;
    }
    *ret_runner_id = id;
    *ret_config = TAKE_PTR(config);
out:
    wipe_member(root, "encodedJITConfig");
    wipe_str(config);
    return r;
}

int scaleset_parse_acquired(const char *data, size_t len, int64_t **ret_ids, size_t *ret_n,
                            struct al_error **err)
{
    _cleanup_(yajl_tree_freep) yajl_val root = NULL;
    yajl_val v = NULL;
    int r = parse_list(data, len, "the acquirejobs answer", SCALESET_MAX_ACQUIRED, &root, &v, err);
    if (r < 0)
        return r;
    size_t n = v ? v->u.array.len : 0;
    _cleanup_free_ int64_t *ids = calloc(n ? n : 1, sizeof(*ids));
    if (!ids)
        return al_error_set(err, ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        yajl_val x = v->u.array.values[i];
        if (!YAJL_IS_INTEGER(x) || YAJL_GET_INTEGER(x) < 1) {
            char p[64];
            snprintf(p, sizeof(p), "value[%zu]", i);
            return al_json_fail(err, p, "expected a positive integer");
        }
        ids[i] = YAJL_GET_INTEGER(x);
    }
    *ret_ids = TAKE_PTR(ids);
    *ret_n = n;
    return 0;
}

/* ---- errors ------------------------------------------------------------- */

static bool error_field(const char *data, size_t len, const char *key, char *buf, size_t size)
{
    buf[0] = '\0';
    if (!data || !len)
        return false;
    _cleanup_(yajl_tree_freep) yajl_val root = NULL;
    if (parse_doc(data, len, yajl_t_object, "the error", &root, NULL) < 0)
        return false;
    yajl_val v = NULL;
    if (member(root, key, "", &v, NULL) < 0 || !v || !YAJL_IS_STRING(v))
        return false;
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)YAJL_GET_STRING(v); *p && o + 1 < size;
         p++)
        buf[o++] = *p >= 0x20 && *p != 0x7f ? (char)*p : '?';
    buf[o] = '\0';
    return true;
}

bool scaleset_error_is(const char *data, size_t len, const char *what)
{
    char t[512];
    return error_field(data, len, "typeName", t, sizeof(t)) && strstr(t, what);
}

void scaleset_error_message(const char *data, size_t len, char *buf, size_t size)
{
    if (size)
        error_field(data, len, "message", buf, size);
}
