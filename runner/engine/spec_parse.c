#include "runner/engine/spec.h"

#include <inttypes.h>
#include <stdarg.h>
#include <string.h>
#include <yajl/yajl_parse.h>

#include "runner/base/json_tree.h"
#include "runner/base/log.h"
#include "runner/base/utf8.h"
#include "runner/base/util.h"
#include "runner/engine/batch.h"
#include "runner/engine/spec_text.h"
#include "runner/engine/store_batch.h"

/* ---- schema ------------------------------------------------------------- */

enum field {
    F_NAME,
    F_IMAGE,
    F_COMMAND,
    F_SCRIPT,
    F_ENV,
    F_SECRET_ENV,
    F_SECRET_ENV_NAMES,
    F_RESOURCES,
    F_TIMEOUT_S,
    F_ARTIFACTS,
    F_LABELS,
    F_POOL,
    F_BATCH,
    F_POOL_REASON,
    F_SOURCE,
    F_MAX_ATTEMPTS,
    F_INJECT,
    F_CPUS,
    F_MEMORY_MB,
    F_DISK_GB,
    F_SOURCE_TYPE,
    F_SOURCE_ID,
    F_SOURCE_URL,
    F_COUNT,
    F_ROOT = -1,
};

enum value_kind {
    K_STRING,
    K_INT,
    K_ARRAY, /* of strings */
    K_MAP,   /* name -> string */
    K_OBJECT,
};

struct field_desc {
    const char *name;
    enum field parent; /* F_ROOT, F_RESOURCES or F_SOURCE */
    enum value_kind kind;
    int64_t min, max; /* K_INT */
    bool stored_only; /* accepted only with JOB_SPEC_PARSE_STORED */
};

static const struct field_desc fields[F_COUNT] = {
        [F_NAME] = {"name", F_ROOT, K_STRING, 0, 0, false},
        [F_IMAGE] = {"image", F_ROOT, K_STRING, 0, 0, false},
        [F_COMMAND] = {"command", F_ROOT, K_ARRAY, 0, 0, false},
        [F_SCRIPT] = {"script", F_ROOT, K_STRING, 0, 0, false},
        [F_ENV] = {"env", F_ROOT, K_MAP, 0, 0, false},
        [F_SECRET_ENV] = {"secret_env", F_ROOT, K_MAP, 0, 0, false},
        [F_SECRET_ENV_NAMES] = {"secret_env_names", F_ROOT, K_ARRAY, 0, 0, true},
        [F_RESOURCES] = {"resources", F_ROOT, K_OBJECT, 0, 0, false},
        [F_TIMEOUT_S] = {"timeout_s", F_ROOT, K_INT, 1, JOB_SPEC_MAX_TIMEOUT_S, false},
        [F_ARTIFACTS] = {"artifacts", F_ROOT, K_ARRAY, 0, 0, false},
        [F_LABELS] = {"labels", F_ROOT, K_ARRAY, 0, 0, false},
        [F_POOL] = {"pool", F_ROOT, K_STRING, 0, 0, false},
        [F_BATCH] = {"batch", F_ROOT, K_STRING, 0, 0, false},
        [F_POOL_REASON] = {"pool_reason", F_ROOT, K_STRING, 0, 0, true},
        [F_SOURCE] = {"source", F_ROOT, K_OBJECT, 0, 0, false},
        [F_MAX_ATTEMPTS] = {"max_attempts", F_ROOT, K_INT, 1, JOB_SPEC_MAX_MAX_ATTEMPTS, false},
        [F_INJECT] = {"inject", F_ROOT, K_STRING, 0, 0, false},
        [F_CPUS] = {"cpus", F_RESOURCES, K_INT, 1, JOB_SPEC_MAX_CPUS, false},
        [F_MEMORY_MB] = {"memory_mb", F_RESOURCES, K_INT, JOB_SPEC_MIN_MEMORY_MB,
                         JOB_SPEC_MAX_MEMORY_MB, false},
        [F_DISK_GB] = {"disk_gb", F_RESOURCES, K_INT, 1, JOB_SPEC_MAX_DISK_GB, false},
        [F_SOURCE_TYPE] = {"type", F_SOURCE, K_STRING, 0, 0, false},
        [F_SOURCE_ID] = {"id", F_SOURCE, K_STRING, 0, 0, false},
        [F_SOURCE_URL] = {"url", F_SOURCE, K_STRING, 0, 0, false},
};

/* ---- the streaming parser ----------------------------------------------- */

enum frame_type {
    FR_OBJECT, /* the root, resources or source: fixed fields */
    FR_MAP,    /* env or secret_env: name -> string */
    FR_ARRAY,  /* an array of strings */
};

struct frame {
    enum frame_type type;
    enum field field; /* the field this container is the value of; F_ROOT for the root */
    uint32_t seen;    /* FR_OBJECT: fields already given (duplicates) */
    int key;          /* FR_OBJECT: field of the pending value, or -1 */
    size_t index;     /* FR_ARRAY: index of the next element */
};

enum jtype {
    J_NULL,
    J_BOOL,
    J_NUMBER,
    J_STRING,
    J_OBJECT,
    J_ARRAY,
};

struct jvalue {
    enum jtype type;
    const char *s; /* J_STRING, J_NUMBER: not NUL-terminated */
    size_t len;
    bool b;
};

struct parser {
    struct job_spec *spec;
    unsigned flags;
    struct frame stack[JOB_SPEC_MAX_DEPTH];
    int depth;     /* open containers */
    char *map_key; /* FR_MAP: name of the pending value */
    size_t map_key_len;
    size_t cap_command, cap_env, cap_secret_env, cap_artifacts, cap_labels;
    const struct spec_doc_secrets *doc_secrets;
    struct al_error *error;
};

/* The path of the position inside the first `levels` open containers:
 * "resources.cpus", "command[2]", "env.HOME". Empty at the top. */
static void path_at(const struct parser *p, int levels, char *buf, size_t size)
{
    size_t o = 0;
    buf[0] = '\0';
    for (int i = 0; i < levels && o + 1 < size; i++) {
        const struct frame *f = &p->stack[i];
        int n = 0;
        if (f->type == FR_OBJECT) {
            if (f->key < 0)
                break;
            n = snprintf(buf + o, size - o, "%s%s", i ? "." : "", fields[f->key].name);
        } else if (f->type == FR_MAP) {
            if (!p->map_key || i != p->depth - 1)
                break;
            char q[200];
            if (job_env_name_is_valid(p->map_key)) {
                n = snprintf(buf + o, size - o, ".%s", p->map_key);
            } else {
                spec_quote(p->doc_secrets, q, sizeof(q), p->map_key, p->map_key_len);
                n = snprintf(buf + o, size - o, "[%s]", q);
            }
        } else {
            n = snprintf(buf + o, size - o, "[%zu]", f->index);
        }
        if (n < 0 || (size_t)n >= size - o)
            break;
        o += (size_t)n;
    }
}

static int fail_at(struct parser *p, int levels, const char *fmt, ...) _printf_(3, 4);

/* Records the first error, prefixed with the path; returns 0 so yajl stops. */
static int fail_at(struct parser *p, int levels, const char *fmt, ...)
{
    if (p->error)
        return 0;
    char path[512];
    path_at(p, levels, path, sizeof(path));
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    al_error_set(&p->error, EINVAL, "%s: %s", path[0] ? path : "job spec", msg);
    return 0;
}

#define fail(p, ...) fail_at((p), (p)->depth, __VA_ARGS__)

static int fail_nomem(struct parser *p)
{
    al_error_set(&p->error, ENOMEM, "job spec: out of memory");
    return 0;
}

/* Is the value at the current position a secret (never echoed)? */
static bool at_secret(const struct parser *p)
{
    if (p->depth == 0)
        return false;
    const struct frame *f = &p->stack[p->depth - 1];
    return f->field == F_SECRET_ENV || (f->type == FR_OBJECT && f->key == F_SECRET_ENV);
}

static void describe(const struct parser *p, const struct jvalue *v, char *buf, size_t size)
{
    bool secret = at_secret(p);
    switch (v->type) {
    case J_NULL:
        snprintf(buf, size, "null");
        break;
    case J_BOOL:
        snprintf(buf, size, "%s", v->b ? "true" : "false");
        break;
    case J_NUMBER:
        if (secret)
            snprintf(buf, size, "a number");
        else
            snprintf(buf, size, "%.*s%s", (int)(v->len > 40 ? 40 : v->len), v->s,
                     v->len > 40 ? "..." : "");
        break;
    case J_STRING:
        if (secret)
            snprintf(buf, size, "a string");
        else
            spec_quote(p->doc_secrets, buf, size, v->s, v->len);
        break;
    case J_OBJECT:
        snprintf(buf, size, "an object");
        break;
    case J_ARRAY:
        snprintf(buf, size, "an array");
        break;
    }
}

static int fail_type(struct parser *p, const struct jvalue *v, const char *expected)
{
    char got[128];
    describe(p, v, got, sizeof(got));
    return fail(p, "expected %s, got %s", expected, got);
}

/* Makes room in arr (capacity cap) for element n and one more slot (the
 * NULL terminator of a string vector). Callers check n < limit first, so
 * limit + 1 slots always suffice. Evaluates to 0 or -ENOMEM. */
#define GROW(arr, cap, n, limit)                                                      \
    ({                                                                                \
        int _grow_r = 0;                                                              \
        if ((n) + 1 >= (cap)) {                                                       \
            size_t _grow_cap = (cap) ? (cap)*2 : 8;                                   \
            if (_grow_cap > (size_t)(limit) + 1)                                      \
                _grow_cap = (size_t)(limit) + 1;                                      \
            __typeof__(arr) _grow_p = reallocarray((arr), _grow_cap, sizeof(*(arr))); \
            if (_grow_p) {                                                            \
                (arr) = _grow_p;                                                      \
                (cap) = _grow_cap;                                                    \
            } else {                                                                  \
                _grow_r = -ENOMEM;                                                    \
            }                                                                         \
        }                                                                             \
        _grow_r;                                                                      \
    })

/* Appends a copy of s to a NULL-terminated vector. */
static int strv_push(char ***v, size_t *n, size_t *cap, size_t limit, const char *s, size_t len)
{
    if (GROW(*v, *cap, *n, limit) < 0)
        return -ENOMEM;
    char *copy = strndup(s, len);
    if (!copy)
        return -ENOMEM;
    (*v)[(*n)++] = copy;
    (*v)[*n] = NULL;
    return 0;
}

static int set_string_field(struct parser *p, char **slot, const char *s, size_t len)
{
    char *copy = strndup(s, len);
    if (!copy)
        return fail_nomem(p);
    free(*slot);
    *slot = copy;
    return 1;
}

static int on_string_field(struct parser *p, enum field f, const struct jvalue *v)
{
    struct job_spec *spec = p->spec;
    char got[128];
    switch (f) {
    case F_NAME:
        if (v->len == 0)
            return fail(p, "must not be empty");
        if (v->len > JOB_SPEC_MAX_NAME)
            return fail(p, "must be at most %d bytes, got %zu", JOB_SPEC_MAX_NAME, v->len);
        if (!spec_is_printable((const unsigned char *)v->s, v->len))
            return fail(p, "must not contain control characters");
        return set_string_field(p, &spec->name, v->s, v->len);
    case F_BATCH: {
        char name[STORE_BATCH_NAME_MAX + 1];
        bool ok = v->len <= STORE_BATCH_NAME_MAX && !memchr(v->s, '\0', v->len);
        if (ok) {
            memcpy(name, v->s, v->len);
            name[v->len] = '\0';
            ok = batch_name_is_valid(name);
        }
        if (!ok) {
            spec_quote(p->doc_secrets, got, sizeof(got), v->s, v->len);
            return fail(p,
                        "expected a batch name of letters, digits, '.', '_' and '-' (at most %d, "
                        "not starting with '.' or '-'), got %s",
                        STORE_BATCH_NAME_MAX, got);
        }
        return set_string_field(p, &spec->batch, v->s, v->len);
    }
    case F_POOL_REASON:
        if (v->len > JOB_SPEC_MAX_NAME * 2 ||
            !spec_is_printable((const unsigned char *)v->s, v->len))
            return fail(p, "must be at most %d printable bytes", JOB_SPEC_MAX_NAME * 2);
        return set_string_field(p, &spec->pool_reason, v->s, v->len);
    case F_IMAGE:
    case F_POOL:
        if (!spec_name_is_valid(v->s, v->len)) {
            spec_quote(p->doc_secrets, got, sizeof(got), v->s, v->len);
            return fail(p, "expected a name matching [A-Za-z0-9][A-Za-z0-9._-]{0,62}, got %s", got);
        }
        return set_string_field(p, f == F_IMAGE ? &spec->image : &spec->pool, v->s, v->len);
    case F_SCRIPT:
        if (v->len == 0)
            return fail(p, "must not be empty");
        if (v->len > JOB_SPEC_MAX_SCRIPT)
            return fail(p, "must be at most %u bytes, got %zu", JOB_SPEC_MAX_SCRIPT, v->len);
        return set_string_field(p, &spec->script, v->s, v->len);
    case F_INJECT: {
        int mode;
        _cleanup_free_ char *copy = strndup(v->s, v->len);
        if (!copy)
            return fail_nomem(p);
        if (strlen(copy) != v->len || inject_mode_from_string(copy, &mode) < 0) {
            spec_quote(p->doc_secrets, got, sizeof(got), v->s, v->len);
            return fail(p, "expected \"seed\" or \"guestfs\", got %s", got);
        }
        spec->inject = mode;
        return 1;
    }
    case F_SOURCE_TYPE: {
        enum job_source_type t;
        _cleanup_free_ char *copy = strndup(v->s, v->len);
        if (!copy)
            return fail_nomem(p);
        if (strlen(copy) != v->len || job_source_type_from_string(copy, &t) < 0) {
            spec_quote(p->doc_secrets, got, sizeof(got), v->s, v->len);
            return fail(p, "expected one of spool, api, http, gitlab, github, cli, got %s", got);
        }
        spec->source.type = t;
        return 1;
    }
    case F_SOURCE_ID:
    case F_SOURCE_URL: {
        size_t max = f == F_SOURCE_ID ? JOB_SPEC_MAX_SOURCE_ID : JOB_SPEC_MAX_URL;
        if (v->len == 0)
            return fail(p, "must not be empty");
        if (v->len > max)
            return fail(p, "must be at most %zu bytes, got %zu", max, v->len);
        if (!spec_is_printable((const unsigned char *)v->s, v->len))
            return fail(p, "must not contain control characters");
        return set_string_field(p, f == F_SOURCE_ID ? &spec->source.id : &spec->source.url, v->s,
                                v->len);
    }
    default:
        return fail(p, "internal error: unexpected string field");
    }
}

static int on_int_field(struct parser *p, enum field f, const struct jvalue *v)
{
    const struct field_desc *d = &fields[f];
    int64_t n = 0;
    char num[32];
    bool ok = v->type == J_NUMBER && v->len < sizeof(num);
    if (ok) {
        memcpy(num, v->s, v->len);
        num[v->len] = '\0';
        /* JSON integers only: no fraction, no exponent */
        ok = strcspn(num, ".eE") == v->len && al_parse_int64(num, d->min, d->max, &n) == 0;
    }
    if (!ok) {
        char expected[96];
        snprintf(expected, sizeof(expected), "an integer from %" PRId64 " to %" PRId64, d->min,
                 d->max);
        return fail_type(p, v, expected);
    }
    struct job_spec *spec = p->spec;
    switch (f) {
    case F_TIMEOUT_S:
        spec->timeout_s = n;
        break;
    case F_MAX_ATTEMPTS:
        spec->max_attempts = (int)n;
        break;
    case F_CPUS:
        spec->resources.cpus = (int)n;
        break;
    case F_MEMORY_MB:
        spec->resources.memory_mb = (int)n;
        break;
    case F_DISK_GB:
        spec->resources.disk_gb = (int)n;
        break;
    default:
        return fail(p, "internal error: unexpected integer field");
    }
    return 1;
}

static size_t env_count(const struct job_spec *spec)
{
    return spec->n_env + spec->n_secret_env;
}

static bool env_has(const struct job_env_var *vars, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++) {
        if (streq(vars[i].name, name))
            return true;
    }
    return false;
}

/* A new env/secret_env entry named `name` (ownership taken) with value. */
static int env_push(struct parser *p, bool secret, char *name, const char *value, size_t len)
{
    struct job_spec *spec = p->spec;
    struct job_env_var **vars = secret ? &spec->secret_env : &spec->env;
    size_t *n = secret ? &spec->n_secret_env : &spec->n_env;
    size_t *cap = secret ? &p->cap_secret_env : &p->cap_env;
    _cleanup_free_ char *owned = name;
    char *copy = NULL;
    if (value && !(copy = strndup(value, len)))
        return fail_nomem(p);
    if (GROW(*vars, *cap, *n, JOB_SPEC_MAX_ENV) < 0) {
        free(copy);
        return fail_nomem(p);
    }
    (*vars)[(*n)++] = (struct job_env_var){.name = TAKE_PTR(owned), .value = copy};
    return 1;
}

static int on_array_element(struct parser *p, struct frame *f, const struct jvalue *v)
{
    struct job_spec *spec = p->spec;
    char got[128];
    int r = 0;
    if (v->type != J_STRING)
        return fail_type(p, v, "a string");
    switch (f->field) {
    case F_COMMAND:
        if (f->index >= JOB_SPEC_MAX_ARGS)
            return fail_at(p, p->depth - 1, "more than %d arguments", JOB_SPEC_MAX_ARGS);
        if (v->len > JOB_SPEC_MAX_STRING)
            return fail(p, "must be at most %u bytes, got %zu", JOB_SPEC_MAX_STRING, v->len);
        if (f->index == 0 && v->len == 0)
            return fail(p, "the program name must not be empty");
        r = strv_push(&spec->command, &spec->n_command, &p->cap_command, JOB_SPEC_MAX_ARGS, v->s,
                      v->len);
        break;
    case F_ARTIFACTS:
        if (f->index >= JOB_SPEC_MAX_ARTIFACTS)
            return fail_at(p, p->depth - 1, "more than %d paths", JOB_SPEC_MAX_ARTIFACTS);
        if (v->len > JOB_SPEC_MAX_PATH)
            return fail(p, "must be at most %d bytes, got %zu", JOB_SPEC_MAX_PATH, v->len);
        if (!spec_is_printable((const unsigned char *)v->s, v->len))
            return fail(p, "must not contain control characters");
        r = strv_push(&spec->artifacts, &spec->n_artifacts, &p->cap_artifacts,
                      JOB_SPEC_MAX_ARTIFACTS, v->s, v->len);
        if (r == 0 && !spec_artifact_path_is_valid(spec->artifacts[spec->n_artifacts - 1])) {
            spec_quote(p->doc_secrets, got, sizeof(got), v->s, v->len);
            return fail(p,
                        "expected a relative path without \"..\" components or an absolute "
                        "path, got %s",
                        got);
        }
        break;
    case F_LABELS:
        if (f->index >= JOB_SPEC_MAX_LABELS)
            return fail_at(p, p->depth - 1, "more than %d labels", JOB_SPEC_MAX_LABELS);
        if (!spec_name_is_valid(v->s, v->len)) {
            spec_quote(p->doc_secrets, got, sizeof(got), v->s, v->len);
            return fail(p, "expected a name matching [A-Za-z0-9][A-Za-z0-9._-]{0,62}, got %s", got);
        }
        for (size_t i = 0; i < spec->n_labels; i++) {
            if (strlen(spec->labels[i]) == v->len && memcmp(spec->labels[i], v->s, v->len) == 0)
                return fail(p, "duplicate label \"%s\"", spec->labels[i]);
        }
        r = strv_push(&spec->labels, &spec->n_labels, &p->cap_labels, JOB_SPEC_MAX_LABELS, v->s,
                      v->len);
        break;
    case F_SECRET_ENV_NAMES: {
        if (env_count(spec) >= JOB_SPEC_MAX_ENV)
            return fail_at(p, p->depth - 1, "more than %d entries in env and secret_env",
                           JOB_SPEC_MAX_ENV);
        _cleanup_free_ char *name = strndup(v->s, v->len);
        if (!name)
            return fail_nomem(p);
        if (strlen(name) != v->len || !job_env_name_is_valid(name)) {
            spec_quote(p->doc_secrets, got, sizeof(got), v->s, v->len);
            return fail(p, "expected a variable name matching [A-Za-z_][A-Za-z0-9_]*, got %s", got);
        }
        if (env_has(spec->secret_env, spec->n_secret_env, name))
            return fail(p, "duplicate name \"%s\"", name);
        f->index++;
        return env_push(p, true, TAKE_PTR(name), NULL, 0);
    }
    default:
        return fail(p, "internal error: unexpected array");
    }
    if (r < 0)
        return fail_nomem(p);
    f->index++;
    return 1;
}

static int on_map_value(struct parser *p, struct frame *f, const struct jvalue *v)
{
    bool secret = f->field == F_SECRET_ENV;
    if (v->type != J_STRING)
        return fail_type(p, v, "a string");
    if (v->len > JOB_SPEC_MAX_STRING)
        return fail(p, "must be at most %u bytes, got %zu", JOB_SPEC_MAX_STRING, v->len);
    if (secret && v->len < AL_REDACT_MIN_LEN)
        return fail(p,
                    "a secret must be at least %d bytes long (shorter values cannot be "
                    "masked in logs)",
                    AL_REDACT_MIN_LEN);
    char *name = TAKE_PTR(p->map_key);
    p->map_key_len = 0;
    return env_push(p, secret, name, v->s, v->len);
}

static int push_frame(struct parser *p, enum frame_type type, enum field field)
{
    /* Valid documents nest 2 levels; this guards the stack. */
    if (p->depth >= JOB_SPEC_MAX_DEPTH)
        return fail(p, "nested deeper than %d levels", JOB_SPEC_MAX_DEPTH);
    p->stack[p->depth++] = (struct frame){.type = type, .field = field, .key = -1};
    return 1;
}

/* Every JSON value (scalar, or the opening of a container) lands here. */
static int on_value(struct parser *p, const struct jvalue *v)
{
    if (p->error)
        return 0;
    if (v->type == J_STRING) {
        /* yajl's own UTF-8 check is off: ours is stricter and names the field */
        if (memchr(v->s, '\0', v->len))
            return fail(p, "must not contain NUL bytes");
        if (!al_utf8_is_valid((const unsigned char *)v->s, v->len))
            return fail(p, "invalid UTF-8");
    }
    if (p->depth == 0) {
        if (v->type != J_OBJECT)
            return fail_type(p, v, "a JSON object");
        return push_frame(p, FR_OBJECT, F_ROOT);
    }
    struct frame *f = &p->stack[p->depth - 1];
    if (f->type == FR_ARRAY)
        return on_array_element(p, f, v);
    if (f->type == FR_MAP)
        return on_map_value(p, f, v);

    enum field field = (enum field)f->key;
    switch (fields[field].kind) {
    case K_STRING:
        if (v->type != J_STRING)
            return fail_type(p, v, "a string");
        if (!on_string_field(p, field, v))
            return 0;
        f->key = -1;
        return 1;
    case K_INT:
        if (!on_int_field(p, field, v))
            return 0;
        f->key = -1;
        return 1;
    case K_ARRAY:
        if (v->type != J_ARRAY)
            return fail_type(p, v, "an array of strings");
        return push_frame(p, FR_ARRAY, field);
    case K_MAP:
        if (v->type != J_OBJECT)
            return fail_type(p, v, "an object of NAME: \"value\" pairs");
        return push_frame(p, FR_MAP, field);
    case K_OBJECT:
        if (v->type != J_OBJECT)
            return fail_type(p, v, "an object");
        return push_frame(p, FR_OBJECT, field);
    }
    return fail(p, "internal error: unknown field kind");
}

static int cb_null(void *ctx)
{
    return on_value(ctx, &(struct jvalue){.type = J_NULL});
}

static int cb_boolean(void *ctx, int b)
{
    return on_value(ctx, &(struct jvalue){.type = J_BOOL, .b = b != 0});
}

static int cb_number(void *ctx, const char *s, size_t len)
{
    return on_value(ctx, &(struct jvalue){.type = J_NUMBER, .s = s, .len = len});
}

static int cb_string(void *ctx, const unsigned char *s, size_t len)
{
    return on_value(ctx, &(struct jvalue){.type = J_STRING, .s = (const char *)s, .len = len});
}

static int cb_start_map(void *ctx)
{
    return on_value(ctx, &(struct jvalue){.type = J_OBJECT});
}

static int cb_start_array(void *ctx)
{
    return on_value(ctx, &(struct jvalue){.type = J_ARRAY});
}

static int cb_map_key(void *ctx, const unsigned char *key, size_t len)
{
    struct parser *p = ctx;
    if (p->error)
        return 0;
    struct frame *f = &p->stack[p->depth - 1];
    const char *k = (const char *)key;
    char shown[200];
    spec_quote(p->doc_secrets, shown, sizeof(shown), k, len);

    if (f->type == FR_OBJECT) {
        for (int i = 0; i < F_COUNT; i++) {
            const struct field_desc *d = &fields[i];
            if (d->parent != f->field || strlen(d->name) != len || memcmp(d->name, k, len) != 0)
                continue;
            if (d->stored_only && !(p->flags & JOB_SPEC_PARSE_STORED))
                break;
            if (f->seen & (1u << i)) {
                f->key = i;
                return fail(p, "duplicate field");
            }
            f->seen |= 1u << i;
            f->key = i;
            return 1;
        }
        char path[512];
        path_at(p, p->depth - 1, path, sizeof(path));
        bool plain = len > 0 && len < 64 && spec_name_is_valid(k, len);
        al_error_set(&p->error, EINVAL, "%s%s%.*s: unknown field", path, path[0] ? "." : "",
                     plain ? (int)len : (int)strlen(shown), plain ? k : shown);
        return 0;
    }

    /* FR_MAP: env or secret_env */
    bool secret = f->field == F_SECRET_ENV;
    if (env_count(p->spec) >= JOB_SPEC_MAX_ENV)
        return fail_at(p, p->depth - 1, "more than %d entries in env and secret_env",
                       JOB_SPEC_MAX_ENV);
    if (memchr(k, '\0', len) || !al_utf8_is_valid(key, len) || len > JOB_SPEC_MAX_ENV_NAME)
        return fail_at(p, p->depth - 1, "invalid variable name %s", shown);
    free(p->map_key);
    p->map_key = strndup(k, len);
    if (!p->map_key)
        return fail_nomem(p);
    p->map_key_len = len;
    if (!job_env_name_is_valid(p->map_key))
        return fail(p, "invalid variable name: expected [A-Za-z_][A-Za-z0-9_]*");
    const struct job_spec *spec = p->spec;
    if (secret ? env_has(spec->secret_env, spec->n_secret_env, p->map_key)
               : env_has(spec->env, spec->n_env, p->map_key))
        return fail(p, "duplicate name");
    return 1;
}

static int cb_end_map(void *ctx)
{
    struct parser *p = ctx;
    if (p->error)
        return 0;
    p->depth--;
    if (p->depth > 0)
        p->stack[p->depth - 1].key = -1;
    return 1;
}

static int cb_end_array(void *ctx)
{
    struct parser *p = ctx;
    if (p->error)
        return 0;
    struct frame *f = &p->stack[p->depth - 1];
    if (f->field == F_COMMAND && f->index == 0)
        return fail_at(p, p->depth - 1, "expected at least one argument");
    p->depth--;
    if (p->depth > 0)
        p->stack[p->depth - 1].key = -1;
    return 1;
}

static const yajl_callbacks callbacks = {
        .yajl_null = cb_null,
        .yajl_boolean = cb_boolean,
        .yajl_number = cb_number,
        .yajl_string = cb_string,
        .yajl_start_map = cb_start_map,
        .yajl_map_key = cb_map_key,
        .yajl_end_map = cb_end_map,
        .yajl_start_array = cb_start_array,
        .yajl_end_array = cb_end_array,
};

DEFINE_CLEANUP_FUNC(struct yajl_handle_t, yajl_free)

/* The pending map key is needed until the last error message is built. */
static void parser_done(struct parser *p)
{
    free(p->map_key);
    p->map_key = NULL;
}

/* Rules that span fields, checked once the document is complete. */
static int check_whole(const struct job_spec *spec, struct al_error **err)
{
    if (!spec->command && !spec->script)
        return al_error_set(err, EINVAL, "command: one of \"command\" or \"script\" is required");
    if (spec->command && spec->script)
        return al_error_set(err, EINVAL, "script: \"command\" and \"script\" cannot both be set");
    for (size_t i = 0; i < spec->n_secret_env; i++) {
        if (env_has(spec->env, spec->n_env, spec->secret_env[i].name))
            return al_error_set(err, EINVAL, "secret_env.%s: also set in env",
                                spec->secret_env[i].name);
    }
    return 0;
}

/* ---- entry point -------------------------------------------------------- */

static int parse_document(const char *data, size_t len, unsigned flags,
                          const struct spec_doc_secrets *doc, struct job_spec **ret_spec,
                          struct al_error **err)
{
    _cleanup_job_spec_ struct job_spec *spec = calloc(1, sizeof(*spec));
    if (!spec)
        return al_error_set(err, ENOMEM, "job spec: out of memory");
    spec->inject = -1;

    _cleanup_(parser_done) struct parser p = {.spec = spec, .flags = flags, .doc_secrets = doc};
    _cleanup_(yajl_freep) yajl_handle h = yajl_alloc(&callbacks, NULL, &p);
    if (!h)
        return al_error_set(err, ENOMEM, "job spec: out of memory");
    yajl_config(h, yajl_dont_validate_strings, 1);

    yajl_status st = yajl_parse(h, (const unsigned char *)data, len);
    if (st == yajl_status_ok)
        st = yajl_complete_parse(h);

    if (st == yajl_status_client_canceled || p.error)
        return al_error_move(err, &p.error);
    if (st != yajl_status_ok) {
        size_t at = yajl_get_bytes_consumed(h);
        unsigned char *msg = yajl_get_error(h, 0, NULL, 0);
        char text[256];
        snprintf(text, sizeof(text), "%s", msg ? (const char *)msg : "syntax error");
        if (msg)
            yajl_free_error(h, msg);
        text[strcspn(text, "\n")] = '\0';
        char path[512];
        path_at(&p, p.depth, path, sizeof(path));
        if (path[0])
            return al_error_set(err, EINVAL, "%s: invalid JSON at byte %zu: %s", path, at, text);
        return al_error_set(err, EINVAL, "job spec: invalid JSON at byte %zu: %s", at, text);
    }
    int r = check_whole(spec, err);
    if (r < 0)
        return r;
    *ret_spec = TAKE_PTR(spec);
    return 0;
}

int job_spec_parse(const char *data, size_t len, unsigned flags, struct job_spec **ret_spec,
                   struct al_error **err)
{
    if (len > JOB_SPEC_MAX_BYTES)
        return al_error_set(err, E2BIG, "job spec: %zu bytes is more than the limit of %u bytes",
                            len, JOB_SPEC_MAX_BYTES);
    if (len == 0)
        return al_error_set(err, EINVAL, "job spec: empty document");
    int r = al_json_check_escapes(data, len, "job spec", err);
    if (r < 0)
        return r;

    _cleanup_error_ struct al_error *e = NULL;
    r = parse_document(data, len, flags, NULL, ret_spec, &e);
    if (r >= 0)
        return r;

    /* The message may quote any field; parse again knowing every secret
     * value of the document so that none of them is repeated, whichever
     * field it also sits in. Parsing is deterministic: same error. */
    _cleanup_(spec_doc_secrets_done) struct spec_doc_secrets doc = {0};
    if (r != -ENOMEM && spec_doc_secrets_collect(data, len, &doc) == 0 && doc.n) {
        e = al_error_free(e);
        r = parse_document(data, len, flags, &doc, ret_spec, &e);
        if (r >= 0)
            return r;
    }
    /* names and other text printed unquoted are masked here */
    size_t n = 0;
    char *masked = e ? spec_mask_secrets(&doc, e->message, strlen(e->message), &n) : NULL;
    if (!masked)
        return al_error_set(err, -r, "job spec: invalid (the message could not be masked)");
    free(e->message);
    e->message = masked;
    return al_error_move(err, &e);
}
