#include "runner/engine/batch.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_tree.h>

#include "runner/base/log.h"
#include "runner/base/util.h"

/* ------------------------------------------------------------ parsing */

void batch_items_clear(struct batch_items *items)
{
    if (!items)
        return;
    for (size_t i = 0; i < items->n; i++) {
        job_spec_free(items->v[i].spec);
        free(items->v[i].params);
    }
    free(items->v);
    items->v = NULL;
    items->n = 0;
}

bool batch_name_is_valid(const char *name)
{
    size_t len = name ? strlen(name) : 0;
    if (len == 0 || len > STORE_BATCH_NAME_MAX || name[0] == '.' || name[0] == '-')
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    return p;
}

/* After the closing quote of the string at p, or NULL. */
static const char *skip_string(const char *p, const char *end)
{
    if (p >= end || *p != '"')
        return NULL;
    for (p++; p < end; p++) {
        if (*p == '\\')
            p++;
        else if (*p == '"')
            return p + 1;
    }
    return NULL;
}

/* After the JSON value at p (not checked beyond its shape), or NULL. */
static const char *skip_value(const char *p, const char *end)
{
    if (p >= end)
        return NULL;
    if (*p == '"')
        return skip_string(p, end);
    if (*p != '{' && *p != '[') {
        while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\t' &&
               *p != '\r' && *p != '\n')
            p++;
        return p;
    }
    int depth = 0;
    while (p < end) {
        if (*p == '"') {
            p = skip_string(p, end);
            if (!p)
                return NULL;
            continue;
        }
        if (*p == '{' || *p == '[')
            depth++;
        else if ((*p == '}' || *p == ']') && --depth == 0)
            return p + 1;
        p++;
    }
    return NULL;
}

struct line_parts {
    bool wrapped;
    const char *spec, *spec_end;
    const char *params, *params_end;
    char unknown[64]; /* a wrapper member that is neither */
};

/* Finds "spec" and "params" among the top-level members of the object on
 * the line. Anything malformed is left to the parsers, which say what. */
static void split_line(const char *p, const char *end, struct line_parts *ret)
{
    memset(ret, 0, sizeof(*ret));
    p = skip_ws(p, end);
    if (p >= end || *p != '{')
        return;
    p = skip_ws(p + 1, end);
    struct line_parts parts = {0};
    while (p < end && *p != '}') {
        const char *key = p;
        const char *key_end = skip_string(p, end);
        if (!key_end)
            return;
        p = skip_ws(key_end, end);
        if (p >= end || *p != ':')
            return;
        p = skip_ws(p + 1, end);
        const char *v = p;
        const char *v_end = skip_value(p, end);
        if (!v_end)
            return;
        size_t klen = (size_t)(key_end - key);
        if (klen == 6 && memcmp(key, "\"spec\"", 6) == 0) {
            parts.wrapped = true;
            parts.spec = v;
            parts.spec_end = v_end;
        } else if (klen == 8 && memcmp(key, "\"params\"", 8) == 0) {
            parts.params = v;
            parts.params_end = v_end;
        } else if (!parts.unknown[0]) {
            snprintf(parts.unknown, sizeof(parts.unknown), "%.*s", (int)(klen > 2 ? klen - 2 : 0),
                     key + 1);
        }
        p = skip_ws(v_end, end);
        if (p < end && *p == ',')
            p = skip_ws(p + 1, end);
    }
    *ret = parts;
}

/* Checks a params object: flat, strings, numbers or booleans. */
static int check_params(const char *text, size_t len, unsigned line, char **ret,
                        struct al_error **err)
{
    if (len > BATCH_MAX_PARAMS)
        return al_error_set(err, EINVAL, "line %u: params: longer than %u bytes", line,
                            BATCH_MAX_PARAMS);
    _cleanup_free_ char *copy = strndup(text, len);
    if (!copy)
        return al_error_set(err, ENOMEM, "line %u: params", line);
    char msg[128] = "";
    yajl_val v = yajl_tree_parse(copy, msg, sizeof(msg));
    if (!v)
        return al_error_set(err, EINVAL, "line %u: params: not valid JSON", line);
    int r = 0;
    if (!YAJL_IS_OBJECT(v)) {
        r = al_error_set(err, EINVAL, "line %u: params: expected an object", line);
    } else {
        for (size_t i = 0; i < v->u.object.len && r == 0; i++) {
            yajl_val x = v->u.object.values[i];
            if (!YAJL_IS_STRING(x) && !YAJL_IS_NUMBER(x) && !YAJL_IS_TRUE(x) && !YAJL_IS_FALSE(x))
                r = al_error_set(err, EINVAL,
                                 "line %u: params.%.64s: expected a string, number or boolean",
                                 line, v->u.object.keys[i]);
        }
    }
    yajl_tree_free(v);
    if (r == 0)
        *ret = TAKE_PTR(copy);
    return r;
}

static int add_label(struct job_spec *spec, const char *label)
{
    for (size_t i = 0; i < spec->n_labels; i++) {
        if (streq(spec->labels[i], label))
            return 0;
    }
    if (spec->n_labels >= JOB_SPEC_MAX_LABELS)
        return -E2BIG;
    char **v = realloc(spec->labels, (spec->n_labels + 2) * sizeof(char *));
    if (!v)
        return -ENOMEM;
    spec->labels = v;
    v[spec->n_labels] = strdup(label);
    if (!v[spec->n_labels])
        return -ENOMEM;
    v[++spec->n_labels] = NULL;
    return 0;
}

static int apply_options(struct batch_item *it, const struct batch_options *o,
                         struct al_error **err)
{
    struct job_spec *spec = it->spec;
    if (o->pool && !spec->pool) {
        spec->pool = strdup(o->pool);
        if (!spec->pool)
            return al_error_set(err, ENOMEM, "line %u", it->line);
    }
    for (char *const *l = o->labels; l && *l; l++) {
        int r = add_label(spec, *l);
        if (r == -E2BIG)
            return al_error_set(err, EINVAL, "line %u: labels: more than %d with the batch's",
                                it->line, JOB_SPEC_MAX_LABELS);
        if (r < 0)
            return al_error_set(err, ENOMEM, "line %u", it->line);
    }
    if (o->retries >= 0)
        spec->max_attempts = o->retries + 1;
    return 0;
}

static int parse_line(const char *p, const char *end, unsigned line, const struct batch_options *o,
                      struct batch_item *ret, struct al_error **err)
{
    struct line_parts parts;
    split_line(p, end, &parts);
    const char *spec = p, *spec_end = end;
    const char *prefix = "";
    _cleanup_free_ char *params = NULL;
    if (parts.wrapped) {
        if (parts.unknown[0])
            return al_error_set(err, EINVAL,
                                "line %u: %s: unknown field (a line is a job spec, or "
                                "{\"spec\": ..., \"params\": ...})",
                                line, parts.unknown);
        spec = parts.spec;
        spec_end = parts.spec_end;
        prefix = "spec.";
        if (parts.params) {
            int r = check_params(parts.params, (size_t)(parts.params_end - parts.params), line,
                                 &params, err);
            if (r < 0)
                return r;
        }
    }
    struct job_spec *js = NULL;
    struct al_error *perr = NULL;
    int r = job_spec_parse(spec, (size_t)(spec_end - spec), 0, &js, &perr);
    if (r < 0) {
        r = al_error_set(err, -r, "line %u: %s%s", line, prefix, al_error_message(perr));
        al_error_free(perr);
        return r;
    }
    if (js->batch) {
        job_spec_free(js);
        return al_error_set(err, EINVAL,
                            "line %u: %sbatch: not allowed in a batch's lines (they are its jobs)",
                            line, prefix);
    }
    *ret = (struct batch_item){.spec = js, .params = TAKE_PTR(params), .line = line};
    return apply_options(ret, o, err);
}

static const struct batch_items *sort_items;

static int cmp_by_name(const void *a, const void *b)
{
    const struct batch_item *x = &sort_items->v[*(const size_t *)a];
    const struct batch_item *y = &sort_items->v[*(const size_t *)b];
    int c = strcmp(x->spec->name, y->spec->name);
    return c ? c : (x->line > y->line) - (x->line < y->line);
}

static int name_items(struct batch_items *items, const struct batch_options *o,
                      struct al_error **err)
{
    int width = 1;
    for (size_t n = items->n; n >= 10; n /= 10)
        width++;
    for (size_t i = 0; i < items->n; i++) {
        struct job_spec *spec = items->v[i].spec;
        if (spec->name)
            continue;
        if (asprintf(&spec->name, "%s-%0*zu", o->name, width, i + 1) < 0) {
            spec->name = NULL;
            return al_error_set(err, ENOMEM, "naming the batch's jobs");
        }
    }
    _cleanup_free_ size_t *order = calloc(items->n ? items->n : 1, sizeof(size_t));
    if (!order)
        return al_error_set(err, ENOMEM, "naming the batch's jobs");
    for (size_t i = 0; i < items->n; i++)
        order[i] = i;
    sort_items = items;
    qsort(order, items->n, sizeof(size_t), cmp_by_name);
    sort_items = NULL;
    for (size_t i = 1; i < items->n; i++) {
        const struct batch_item *a = &items->v[order[i - 1]], *b = &items->v[order[i]];
        if (streq(a->spec->name, b->spec->name))
            return al_error_set(err, EINVAL,
                                "line %u: name: \"%.128s\" is already the name of line %u (job "
                                "names are unique within a batch)",
                                b->line, b->spec->name, a->line);
    }
    return 0;
}

int batch_parse(const char *data, size_t len, const struct batch_options *o,
                struct batch_items *ret, struct al_error **err)
{
    if (!batch_name_is_valid(o->name))
        return al_error_set(err, EINVAL,
                            "name: expected 1 to %d of A-Z a-z 0-9 . _ - (not starting with . "
                            "or -)",
                            STORE_BATCH_NAME_MAX);
    if (o->retries > JOB_SPEC_MAX_MAX_ATTEMPTS - 1)
        return al_error_set(err, EINVAL, "retries: at most %d", JOB_SPEC_MAX_MAX_ATTEMPTS - 1);
    for (char *const *l = o->labels; l && *l; l++) {
        if (!config_name_is_valid(*l))
            return al_error_set(err, EINVAL, "labels: \"%.64s\" is not a valid label", *l);
    }
    if (len > BATCH_MAX_BYTES)
        return al_error_set(err, E2BIG, "a batch is at most %u MiB", BATCH_MAX_BYTES >> 20);
    struct batch_items items = {0};
    size_t cap = 0;
    unsigned line = 0;
    int r = 0;
    for (const char *p = data, *end = data + len; p < end && r == 0;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *line_end = nl ? nl : end;
        line++;
        if (skip_ws(p, line_end) < line_end) {
            if (items.n >= BATCH_MAX_JOBS) {
                r = al_error_set(err, E2BIG, "line %u: a batch has at most %d jobs", line,
                                 BATCH_MAX_JOBS);
                break;
            }
            if (items.n == cap) {
                size_t ncap = cap ? cap * 2 : 64;
                struct batch_item *v = realloc(items.v, ncap * sizeof(*v));
                if (!v) {
                    r = al_error_set(err, ENOMEM, "reading the batch");
                    break;
                }
                items.v = v;
                cap = ncap;
            }
            items.v[items.n] = (struct batch_item){0};
            r = parse_line(p, line_end, line, o, &items.v[items.n], err);
            if (r == 0 || items.v[items.n].spec)
                items.n++;
        }
        p = nl ? nl + 1 : end;
    }
    if (r == 0 && items.n == 0)
        r = al_error_set(err, EINVAL, "the batch has no jobs (one job spec per line)");
    if (r == 0)
        r = name_items(&items, o, err);
    if (r < 0) {
        batch_items_clear(&items);
        return r;
    }
    *ret = items;
    return 0;
}

/* ------------------------------------------------------------ tracking */

struct tracked_batch {
    char id[STORE_BATCH_ID_SIZE];
    unsigned max_parallel;
    unsigned running;
    unsigned live; /* tracked jobs; the slot is reused at 0 */
};

struct tracked_job {
    char id[STORE_JOB_ID_SIZE]; /* "" = empty slot */
    uint32_t batch;             /* index into batches */
    bool running;
};

struct batches {
    struct engine *e;
    struct store *s;
    struct engine_watch *watch;
    struct tracked_batch *v;
    size_t n_v;
    /* open addressing, linear probing; size a power of two, at most half full */
    struct tracked_job *jobs;
    size_t size;
    size_t used;
};

static size_t hash_id(const char *id)
{
    uint64_t h = UINT64_C(1469598103934665603);
    for (; *id; id++)
        h = (h ^ (unsigned char)*id) * UINT64_C(1099511628211);
    return (size_t)h;
}

static struct tracked_job *job_find(struct batches *b, const char *id)
{
    if (!b->size)
        return NULL;
    for (size_t i = hash_id(id) & (b->size - 1);; i = (i + 1) & (b->size - 1)) {
        if (!b->jobs[i].id[0])
            return NULL;
        if (streq(b->jobs[i].id, id))
            return &b->jobs[i];
    }
}

static int job_grow(struct batches *b)
{
    size_t nsize = b->size ? b->size * 2 : 1024;
    struct tracked_job *nj = calloc(nsize, sizeof(*nj));
    if (!nj)
        return -ENOMEM;
    for (size_t k = 0; k < b->size; k++) {
        if (!b->jobs[k].id[0])
            continue;
        size_t i = hash_id(b->jobs[k].id) & (nsize - 1);
        while (nj[i].id[0])
            i = (i + 1) & (nsize - 1);
        nj[i] = b->jobs[k];
    }
    free(b->jobs);
    b->jobs = nj;
    b->size = nsize;
    return 0;
}

static int job_add(struct batches *b, const char *id, uint32_t batch, bool running)
{
    if (job_find(b, id))
        return 0;
    if ((b->used + 1) * 2 > b->size && job_grow(b) < 0)
        return -ENOMEM;
    size_t i = hash_id(id) & (b->size - 1);
    while (b->jobs[i].id[0])
        i = (i + 1) & (b->size - 1);
    snprintf(b->jobs[i].id, sizeof(b->jobs[i].id), "%s", id);
    b->jobs[i].batch = batch;
    b->jobs[i].running = running;
    b->used++;
    b->v[batch].live++;
    b->v[batch].running += running;
    return 0;
}

static void job_remove(struct batches *b, struct tracked_job *t)
{
    struct tracked_batch *tb = &b->v[t->batch];
    tb->live--;
    tb->running -= t->running;
    /* backward-shift deletion keeps every probe chain unbroken */
    size_t mask = b->size - 1;
    size_t i = (size_t)(t - b->jobs);
    b->jobs[i].id[0] = '\0';
    for (size_t j = (i + 1) & mask; b->jobs[j].id[0]; j = (j + 1) & mask) {
        size_t home = hash_id(b->jobs[j].id) & mask;
        /* move j into the hole at i when its home is not in (i, j] */
        bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (stays)
            continue;
        b->jobs[i] = b->jobs[j];
        b->jobs[j].id[0] = '\0';
        i = j;
    }
    b->used--;
}

static int batch_slot(struct batches *b, const char *id, unsigned max_parallel, uint32_t *ret)
{
    size_t free_slot = SIZE_MAX;
    for (size_t i = 0; i < b->n_v; i++) {
        if (streq(b->v[i].id, id)) {
            *ret = (uint32_t)i;
            return 0;
        }
        if (!b->v[i].live && free_slot == SIZE_MAX)
            free_slot = i;
    }
    if (free_slot == SIZE_MAX) {
        struct tracked_batch *v = realloc(b->v, (b->n_v + 1) * sizeof(*v));
        if (!v)
            return -ENOMEM;
        b->v = v;
        free_slot = b->n_v++;
    }
    b->v[free_slot] = (struct tracked_batch){.max_parallel = max_parallel};
    snprintf(b->v[free_slot].id, sizeof(b->v[free_slot].id), "%s", id);
    *ret = (uint32_t)free_slot;
    return 0;
}

static bool gate(const char *job_id, void *data)
{
    struct batches *b = data;
    struct tracked_job *t = job_find(b, job_id);
    if (!t)
        return true;
    const struct tracked_batch *tb = &b->v[t->batch];
    return t->running || tb->running < tb->max_parallel;
}

static void on_event(const struct store_event *ev, void *data)
{
    struct batches *b = data;
    struct tracked_job *t = job_find(b, ev->job_id);
    if (!t)
        return;
    bool running = ev->to != JOB_STATE_QUEUED && !job_state_is_terminal(ev->to);
    if (running != t->running) {
        b->v[t->batch].running += running ? 1 : -1u;
        t->running = running;
    }
}

static void on_finished(const char *job_id, enum job_state state, const struct attempt_result *last,
                        void *data)
{
    (void)state;
    (void)last;
    struct batches *b = data;
    struct tracked_job *t = job_find(b, job_id);
    if (t)
        job_remove(b, t);
}

struct load_ctx {
    struct batches *b;
    int result;
};

static void on_live_job(const char *batch_id, unsigned max_parallel, const char *job_id,
                        enum job_state state, void *data)
{
    struct load_ctx *c = data;
    uint32_t slot;
    if (c->result < 0)
        return;
    c->result = batch_slot(c->b, batch_id, max_parallel, &slot);
    if (c->result == 0)
        c->result = job_add(c->b, job_id, slot, state != JOB_STATE_QUEUED);
}

int batches_new(struct engine *e, struct store *s, struct batches **ret, struct al_error **err)
{
    struct batches *b = calloc(1, sizeof(*b));
    if (!b)
        return al_error_set(err, ENOMEM, "batches");
    b->e = e;
    b->s = s;
    struct load_ctx c = {.b = b};
    int r = store_batch_live_jobs(s, NULL, on_live_job, &c, err);
    if (r == 0 && c.result < 0)
        r = al_error_set(err, -c.result, "loading the live jobs of batches");
    if (r == 0) {
        static const struct engine_observer o = {.event = on_event, .finished = on_finished};
        b->watch = engine_observe(e, &o, b);
        if (!b->watch)
            r = al_error_set(err, ENOMEM, "batches");
    }
    if (r < 0) {
        batches_free(b);
        return r;
    }
    engine_set_gate(e, gate, b);
    *ret = b;
    return 0;
}

struct batches *batches_free(struct batches *b)
{
    if (!b)
        return NULL;
    if (b->watch) {
        engine_set_gate(b->e, NULL, NULL);
        engine_unobserve(b->e, b->watch);
    }
    free(b->jobs);
    free(b->v);
    free(b);
    return NULL;
}

unsigned batches_running(struct batches *b, const char *id)
{
    for (size_t i = 0; i < b->n_v; i++) {
        if (b->v[i].live && streq(b->v[i].id, id))
            return b->v[i].running;
    }
    return 0;
}

/* ------------------------------------------------------------ submit, cancel */

int batches_submit(struct batches *b, const struct batch_options *o, struct batch_items *items,
                   char ret_id[STORE_BATCH_ID_SIZE], struct al_error **err)
{
    int r = 0;
    for (size_t i = 0; i < items->n && r == 0; i++) {
        struct batch_item *it = &items->v[i];
        if (it->spec->source.type == JOB_SOURCE_NONE)
            it->spec->source.type = JOB_SOURCE_API;
        struct al_error *cerr = NULL;
        r = engine_check(b->e, it->spec, &cerr);
        if (r < 0)
            r = al_error_set(err, -r, "line %u: %s", it->line, al_error_message(cerr));
        al_error_free(cerr);
    }
    if (r < 0) {
        batch_items_clear(items);
        return r;
    }

    _cleanup_free_ char(*ids)[STORE_JOB_ID_SIZE] = calloc(items->n, STORE_JOB_ID_SIZE);
    if (!ids) {
        batch_items_clear(items);
        return al_error_set(err, ENOMEM, "submitting the batch");
    }
    struct store_batch_tx *tx = NULL;
    char id[STORE_BATCH_ID_SIZE];
    r = store_batch_begin(b->s, o->name, o->max_parallel, items->n, &tx, id, err);
    if (r < 0) {
        batch_items_clear(items);
        return r;
    }
    uint32_t slot = 0;
    if (o->max_parallel > 0 && batch_slot(b, id, o->max_parallel, &slot) < 0)
        r = al_error_set(err, ENOMEM, "submitting the batch");
    size_t submitted = 0;
    for (size_t i = 0; i < items->n && r == 0; i++) {
        struct batch_item *it = &items->v[i];
        struct job_spec *spec = TAKE_PTR(it->spec);
        r = engine_submit(b->e, spec, NULL, ids[i], err);
        if (r < 0) {
            al_error_wrap(err, "line %u", it->line);
            break;
        }
        submitted++;
        r = store_batch_add_job(tx, i + 1, ids[i], it->params, err);
        if (r == 0 && o->max_parallel > 0 && job_add(b, ids[i], slot, false) < 0)
            r = al_error_set(err, ENOMEM, "submitting the batch");
    }
    if (r == 0)
        r = store_batch_commit(tx, err);
    if (r < 0) {
        store_batch_rollback(tx);
        /* the engine queued these before the transaction failed: they are
         * in no table now; take them out of the queue before it turns */
        for (size_t i = 0; i < submitted; i++)
            engine_cancel(b->e, ids[i], NULL);
        batch_items_clear(items);
        return r;
    }
    batch_items_clear(items);
    memcpy(ret_id, id, STORE_BATCH_ID_SIZE);
    return 0;
}

struct cancel_ctx {
    char (*ids)[STORE_JOB_ID_SIZE];
    size_t n, cap;
    int result;
};

static void on_cancel_job(const char *batch_id, unsigned max_parallel, const char *job_id,
                          enum job_state state, void *data)
{
    (void)batch_id;
    (void)max_parallel;
    (void)state;
    struct cancel_ctx *c = data;
    if (c->result < 0)
        return;
    if (c->n == c->cap) {
        size_t ncap = c->cap ? c->cap * 2 : 64;
        void *v = realloc(c->ids, ncap * STORE_JOB_ID_SIZE);
        if (!v) {
            c->result = -ENOMEM;
            return;
        }
        c->ids = v;
        c->cap = ncap;
    }
    snprintf(c->ids[c->n++], STORE_JOB_ID_SIZE, "%s", job_id);
}

int batches_cancel(struct batches *b, const char *id, unsigned *ret_n, struct al_error **err)
{
    struct store_batch sb;
    int r = store_batch_get(b->s, id, &sb, err);
    if (r < 0)
        return r;
    store_batch_clear(&sb);
    r = store_batch_set_canceled(b->s, id, al_now_wall_ms(), err);
    if (r < 0)
        return r;
    struct cancel_ctx c = {0};
    r = store_batch_live_jobs(b->s, id, on_cancel_job, &c, err);
    if (r == 0 && c.result < 0)
        r = al_error_set(err, -c.result, "cancelling the batch");
    unsigned n = 0;
    /* the engine schedules on its next turn: no queued job of the batch
     * can take the slot of a running one cancelled here */
    for (size_t i = 0; i < c.n && r == 0; i++) {
        if (engine_cancel(b->e, c.ids[i], NULL) == 0)
            n++;
    }
    free(c.ids);
    if (r == 0 && ret_n)
        *ret_n = n;
    return r;
}
