/* Batches: a named group of jobs submitted in one request, watched and
 * collected as one (a test farm's suite, a nightly evaluation's tasks).
 *
 * The request body is JSON Lines: each non-blank line is a job spec
 * (spec.h), or {"spec": {...}, "params": {...}} where params is a flat
 * object of the values the job was made from (a matrix row), kept for the
 * results. Every line is parsed and checked against the engine before
 * anything is stored; the first bad line refuses the whole batch, its
 * message naming the line and the field ("line 17: resources.cpus: ...").
 * The batch and all its jobs are then stored in one transaction.
 *
 * Jobs without a name get "<batch name>-<index>" (index zero-padded to the
 * width of the total), so each job has a name unique within its batch (the
 * results and artifact directories are keyed on it); two lines with the
 * same name refuse the batch.
 *
 * max_parallel caps how many jobs of one batch are past QUEUED at a time:
 * the engine asks batches_gate() before it starts a job, and skips a capped
 * batch's job when the cap is reached, so other jobs (CI) behind it in the
 * queue start as soon as a slot is free. The cap is kept in memory for the
 * live jobs of capped batches only, and rebuilt from the store at start.
 *
 * Loop thread only (like the engine).
 */
#ifndef AL_BATCH_H
#define AL_BATCH_H

#include <stdbool.h>
#include <stddef.h>

#include "runner/base/error.h"
#include "runner/engine/engine.h"
#include "runner/engine/spec.h"
#include "runner/engine/store_batch.h"

#define BATCH_MAX_JOBS   20000
#define BATCH_MAX_BYTES  (64u << 20)
#define BATCH_MAX_PARAMS 4096 /* bytes of one line's params object */

struct batch_options {
    const char *name;      /* [A-Za-z0-9._-], 1..STORE_BATCH_NAME_MAX */
    unsigned max_parallel; /* 0 = no cap but the pool's */
    int retries;           /* -1 = as each spec says; else max_attempts = retries + 1 */
    const char *pool;      /* for lines that name none; NULL = the default pool */
    char *const *labels;   /* added to every job; NULL-terminated, or NULL */
};

struct batch_item {
    struct job_spec *spec;
    char *params; /* JSON object text, or NULL */
    unsigned line;
};

struct batch_items {
    struct batch_item *v;
    size_t n;
};

void batch_items_clear(struct batch_items *items);

/* True for a usable batch name. */
bool batch_name_is_valid(const char *name);

/* Parses a JSON Lines body into items with o applied (pool, labels,
 * retries, default names). -EINVAL names the line and field; -E2BIG for
 * more than BATCH_MAX_JOBS lines or BATCH_MAX_BYTES; -ENOMEM. On success
 * the caller clears *ret. */
int batch_parse(const char *data, size_t len, const struct batch_options *o,
                struct batch_items *ret, struct al_error **err);

struct batches;

/* Starts tracking: observes the engine, installs the scheduling gate and
 * loads the live jobs of capped batches from the store. */
int batches_new(struct engine *e, struct store *s, struct batches **ret, struct al_error **err);

/* Removes the gate and the observer. Accepts NULL; returns NULL. */
struct batches *batches_free(struct batches *b);

/* Checks every item against the engine (defaults applied), then stores the
 * batch and submits its jobs in one transaction. Items' specs are consumed
 * on success and on failure alike. ret_id gets the batch id. */
int batches_submit(struct batches *b, const struct batch_options *o, struct batch_items *items,
                   char ret_id[STORE_BATCH_ID_SIZE], struct al_error **err);

/* Cancels every job of the batch that has not ended; ret_n (may be NULL)
 * gets how many. -ENOENT for an unknown batch. */
int batches_cancel(struct batches *b, const char *id, unsigned *ret_n, struct al_error **err);

/* Jobs of the batch past QUEUED now, as the cap counts them (0 for a batch
 * without a cap). */
unsigned batches_running(struct batches *b, const char *id);

#endif
