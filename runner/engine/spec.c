#include "runner/engine/spec.h"

#include <inttypes.h>
#include <stdarg.h>
#include <string.h>
#include <yajl/yajl_gen.h>
#include <yajl/yajl_parse.h>

#include "runner/base/json_tree.h"
#include "runner/base/log.h"
#include "runner/base/util.h"

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

/* ---- byte-level checks -------------------------------------------------- */

/* Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF. */
static bool utf8_is_valid(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t cp, min;
        if ((c & 0xE0) == 0xC0) {
            n = 1;
            cp = c & 0x1F;
            min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            n = 2;
            cp = c & 0x0F;
            min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            n = 3;
            cp = c & 0x07;
            min = 0x10000;
        } else {
            return false;
        }
        if (len - i - 1 < n)
            return false;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += n + 1;
    }
    return true;
}

/* No C0/C1 control characters and no DEL (input is valid UTF-8). */
static bool is_printable(const unsigned char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (s[i] < 0x20 || s[i] == 0x7f)
            return false;
        if (s[i] == 0xC2 && i + 1 < len && s[i + 1] >= 0x80 && s[i + 1] <= 0x9F)
            return false;
    }
    return true;
}

/* Object names (images, pools, labels): [A-Za-z0-9][A-Za-z0-9._-]{0,62},
 * like config_name_is_valid() but on a counted, unterminated string. */
static bool name_is_valid(const char *s, size_t len)
{
    if (len == 0 || len > AL_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        bool alnum = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || (c != '.' && c != '_' && c != '-')))
            return false;
    }
    return true;
}

bool job_env_name_is_valid(const char *s)
{
    if (!s)
        return false;
    size_t len = strlen(s);
    if (len == 0 || len > JOB_SPEC_MAX_ENV_NAME)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        bool alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
        if (!alpha && (i == 0 || c < '0' || c > '9'))
            return false;
    }
    return true;
}

/* A relative path without ".." components, or an absolute guest path. */
static bool artifact_path_is_valid(const char *s)
{
    if (!*s)
        return false;
    for (const char *p = s; *p;) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return false;
        if (!slash)
            break;
        p = slash + 1;
    }
    return true;
}

/* Secret values of the document being parsed, longest first. They are
 * collected only once a document has failed (see job_spec_parse()): a
 * message about one field must not repeat a secret given in another. */
struct doc_secrets {
    char **values;
    size_t n;
};

/* Replaces every secret of doc, in place, by AL_REDACTED (shorter than any
 * secret); returns the new length. */
static size_t mask_doc_secrets(const struct doc_secrets *doc, char *buf, size_t len)
{
    const size_t rlen = strlen(AL_REDACTED);
    for (size_t k = 0; doc && k < doc->n; k++) {
        size_t slen = strlen(doc->values[k]);
        char *at = buf;
        while ((at = memmem(at, len - (size_t)(at - buf), doc->values[k], slen))) {
            memcpy(at, AL_REDACTED, rlen);
            memmove(at + rlen, at + slen, len - (size_t)(at - buf) - slen);
            len -= slen - rlen;
            at += rlen;
        }
    }
    buf[len] = '\0';
    return len;
}

/* A copy of s[0..len) with every registered secret and every secret of doc
 * masked; NULL when out of memory. */
static char *mask_secrets(const struct doc_secrets *doc, const char *s, size_t len, size_t *ret_len)
{
    size_t n = 0;
    char *masked = al_redact(s, len, &n);
    if (!masked)
        return NULL;
    *ret_len = mask_doc_secrets(doc, masked, n);
    return masked;
}

/* Writes s as a quoted, escaped, possibly shortened string for messages,
 * secrets masked before it is shortened or escaped (either would hide a
 * secret from a later search). */
static void quote(const struct doc_secrets *doc, char *buf, size_t size, const char *in,
                  size_t in_len)
{
    const size_t shown = 40;
    size_t o = 0;
    if (size < 8)
        return;
    size_t len = 0;
    _cleanup_free_ char *s = mask_secrets(doc, in, in_len, &len);
    if (!s) {
        snprintf(buf, size, "a string");
        return;
    }
    buf[o++] = '"';
    for (size_t i = 0; i < len && i < shown; i++) {
        unsigned char c = (unsigned char)s[i];
        if (o + 6 >= size)
            break;
        if (c == '"' || c == '\\') {
            buf[o++] = '\\';
            buf[o++] = (char)c;
        } else if (c < 0x20 || c >= 0x7f) {
            o += (size_t)snprintf(buf + o, size - o, "\\x%02x", c);
        } else {
            buf[o++] = (char)c;
        }
    }
    if (len > shown && o + 5 < size) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o++] = '"';
    buf[o] = '\0';
}

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
    const struct doc_secrets *doc_secrets;
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
                quote(p->doc_secrets, q, sizeof(q), p->map_key, p->map_key_len);
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
            quote(p->doc_secrets, buf, size, v->s, v->len);
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
        if (!is_printable((const unsigned char *)v->s, v->len))
            return fail(p, "must not contain control characters");
        return set_string_field(p, &spec->name, v->s, v->len);
    case F_IMAGE:
    case F_POOL:
        if (!name_is_valid(v->s, v->len)) {
            quote(p->doc_secrets, got, sizeof(got), v->s, v->len);
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
            quote(p->doc_secrets, got, sizeof(got), v->s, v->len);
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
            quote(p->doc_secrets, got, sizeof(got), v->s, v->len);
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
        if (!is_printable((const unsigned char *)v->s, v->len))
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
        if (!is_printable((const unsigned char *)v->s, v->len))
            return fail(p, "must not contain control characters");
        r = strv_push(&spec->artifacts, &spec->n_artifacts, &p->cap_artifacts,
                      JOB_SPEC_MAX_ARTIFACTS, v->s, v->len);
        if (r == 0 && !artifact_path_is_valid(spec->artifacts[spec->n_artifacts - 1])) {
            quote(p->doc_secrets, got, sizeof(got), v->s, v->len);
            return fail(p,
                        "expected a relative path without \"..\" components or an absolute "
                        "path, got %s",
                        got);
        }
        break;
    case F_LABELS:
        if (f->index >= JOB_SPEC_MAX_LABELS)
            return fail_at(p, p->depth - 1, "more than %d labels", JOB_SPEC_MAX_LABELS);
        if (!name_is_valid(v->s, v->len)) {
            quote(p->doc_secrets, got, sizeof(got), v->s, v->len);
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
            quote(p->doc_secrets, got, sizeof(got), v->s, v->len);
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
        if (!utf8_is_valid((const unsigned char *)v->s, v->len))
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
    quote(p->doc_secrets, shown, sizeof(shown), k, len);

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
        bool plain = len > 0 && len < 64 && name_is_valid(k, len);
        al_error_set(&p->error, EINVAL, "%s%s%.*s: unknown field", path, path[0] ? "." : "",
                     plain ? (int)len : (int)strlen(shown), plain ? k : shown);
        return 0;
    }

    /* FR_MAP: env or secret_env */
    bool secret = f->field == F_SECRET_ENV;
    if (env_count(p->spec) >= JOB_SPEC_MAX_ENV)
        return fail_at(p, p->depth - 1, "more than %d entries in env and secret_env",
                       JOB_SPEC_MAX_ENV);
    if (memchr(k, '\0', len) || !utf8_is_valid(key, len) || len > JOB_SPEC_MAX_ENV_NAME)
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

/* ---- collecting a failed document's secret values ---------------------- */

struct secret_scan {
    int depth;
    bool key_is_secret_env; /* the last key at the top was "secret_env" */
    bool in_secret_env;
    char **values;
    size_t n, cap;
    bool nomem;
};

static int scan_start_map(void *ctx)
{
    struct secret_scan *sc = ctx;
    sc->depth++;
    if (sc->depth == 2 && sc->key_is_secret_env)
        sc->in_secret_env = true;
    return 1;
}

static int scan_end(void *ctx)
{
    struct secret_scan *sc = ctx;
    if (sc->depth == 2)
        sc->in_secret_env = false;
    sc->depth--;
    return 1;
}

static int scan_start_array(void *ctx)
{
    struct secret_scan *sc = ctx;
    sc->depth++;
    return 1;
}

static int scan_map_key(void *ctx, const unsigned char *key, size_t len)
{
    struct secret_scan *sc = ctx;
    if (sc->depth == 1)
        sc->key_is_secret_env = len == strlen("secret_env") && memcmp(key, "secret_env", len) == 0;
    return 1;
}

static int scan_string(void *ctx, const unsigned char *s, size_t len)
{
    struct secret_scan *sc = ctx;
    /* shorter values are refused anyway, and masking them would mangle text */
    if (!sc->in_secret_env || sc->depth != 2 || len < AL_REDACT_MIN_LEN || memchr(s, '\0', len))
        return 1;
    if (sc->n + 1 >= sc->cap) {
        size_t cap = sc->cap ? sc->cap * 2 : 8;
        char **v = reallocarray(sc->values, cap, sizeof(*v));
        if (!v) {
            sc->nomem = true;
            return 0;
        }
        sc->values = v;
        sc->cap = cap;
    }
    if (!(sc->values[sc->n] = strndup((const char *)s, len))) {
        sc->nomem = true;
        return 0;
    }
    sc->values[++sc->n] = NULL;
    return 1;
}

static const yajl_callbacks scan_callbacks = {
        .yajl_string = scan_string,
        .yajl_start_map = scan_start_map,
        .yajl_map_key = scan_map_key,
        .yajl_end_map = scan_end,
        .yajl_start_array = scan_start_array,
        .yajl_end_array = scan_end,
};

static int by_length_desc(const void *a, const void *b)
{
    size_t la = strlen(*(char *const *)a), lb = strlen(*(char *const *)b);
    return la < lb ? 1 : la > lb ? -1 : 0;
}

static void doc_secrets_done(struct doc_secrets *doc)
{
    for (size_t i = 0; i < doc->n; i++)
        explicit_bzero(doc->values[i], strlen(doc->values[i]));
    strv_free(doc->values);
    *doc = (struct doc_secrets){0};
}

/* Every string value of the top-level secret_env object that the document
 * holds before its first syntax error, whatever else is wrong with it.
 * Returns 0 or -ENOMEM. */
static int doc_secrets_collect(const char *data, size_t len, struct doc_secrets *ret_doc)
{
    /* most failed documents have no secrets: spare them a second parse
     * (a key may spell "secret_env" with \u escapes) */
    if (!memmem(data, len, "secret_env", strlen("secret_env")) && !memmem(data, len, "\\u", 2))
        return 0;
    struct secret_scan sc = {0};
    yajl_handle h = yajl_alloc(&scan_callbacks, NULL, &sc);
    if (!h)
        return -ENOMEM;
    yajl_config(h, yajl_dont_validate_strings, 1);
    if (yajl_parse(h, (const unsigned char *)data, len) == yajl_status_ok)
        (void)yajl_complete_parse(h);
    yajl_free(h);
    struct doc_secrets doc = {.values = sc.values, .n = sc.n};
    if (sc.nomem) {
        doc_secrets_done(&doc);
        return -ENOMEM;
    }
    if (doc.n > 1)
        qsort(doc.values, doc.n, sizeof(*doc.values), by_length_desc);
    *ret_doc = doc;
    return 0;
}

/* ---- entry point -------------------------------------------------------- */

static int parse_document(const char *data, size_t len, unsigned flags,
                          const struct doc_secrets *doc, struct job_spec **ret_spec,
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
    _cleanup_(doc_secrets_done) struct doc_secrets doc = {0};
    if (r != -ENOMEM && doc_secrets_collect(data, len, &doc) == 0 && doc.n) {
        e = al_error_free(e);
        r = parse_document(data, len, flags, &doc, ret_spec, &e);
        if (r >= 0)
            return r;
    }
    /* names and other text printed unquoted are masked here */
    size_t n = 0;
    char *masked = e ? mask_secrets(&doc, e->message, strlen(e->message), &n) : NULL;
    if (!masked)
        return al_error_set(err, -r, "job spec: invalid (the message could not be masked)");
    free(e->message);
    e->message = masked;
    return al_error_move(err, &e);
}

/* ---- defaults, serialisation, secrets ----------------------------------- */

int job_spec_apply_defaults(struct job_spec *spec, const struct config *cfg, struct al_error **err)
{
    const struct config_agent *a = &cfg->agent;
    if (!spec->image && a->image && *a->image && !(spec->image = strdup(a->image)))
        return al_error_set(err, ENOMEM, "job spec defaults: out of memory");
    if (!spec->pool && a->pool && *a->pool && !(spec->pool = strdup(a->pool)))
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
    free(spec->source.id);
    free(spec->source.url);
    free(spec);
    return NULL;
}
