/* libFuzzer target for everything the GitHub source reads from GitHub
 * (runner/sources/github_payload.c): workflow_job webhook deliveries and
 * the REST answers (JIT config, runner list, runs, jobs, one job, the App
 * installation and its token, error messages), plus the signature check.
 *
 * The first byte picks the parser, the rest is the document, so one corpus
 * covers all of them. Beyond "no crash, no sanitizer report" it checks the
 * contract: a result or an error, never both, only the documented codes,
 * and what an accepted document yields obeys the header's limits (labels,
 * lengths, ids, the base64 alphabet of a JIT config).
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/util.h"
#include "runner/engine/spec.h"
#include "runner/sources/github_labels.h"
#include "runner/sources/github_payload.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond)
{
    if (!cond)
        abort();
}

static void check_failure(int r, struct al_error *err)
{
    check(r == -EINVAL || r == -E2BIG || r == -ENOMEM);
    check(err && al_error_message(err)[0]);
    al_error_free(err);
}

static void check_job(const struct github_job *j)
{
    check(j->id > 0 && j->run_id > 0 && j->status && j->status[0]);
    check(j->labels && j->n_labels <= GITHUB_MAX_LABELS && !j->labels[j->n_labels]);
    for (size_t i = 0; i < j->n_labels; i++)
        check(j->labels[i][0] && strlen(j->labels[i]) <= GITHUB_MAX_LABEL);
    check(!j->runner_name || (j->runner_name[0] && strlen(j->runner_name) <= GITHUB_MAX_NAME));
    /* label matching is total: a job always matches its own labels */
    if (j->n_labels)
        check(github_labels_match(j->labels, j->n_labels, j->labels, j->n_labels));
    /* the label forms: a size in range, or an error; the other labels kept */
    struct github_job_wants w = {0};
    struct al_error *err = NULL;
    int r = github_job_wants_parse(j->labels, j->n_labels, &w, &err);
    if (r < 0) {
        check(r == -EINVAL || r == -ENOMEM);
        check(err && al_error_message(err)[0]);
        al_error_free(err);
        return;
    }
    check(w.cpus >= 0 && w.cpus <= JOB_SPEC_MAX_CPUS);
    check(w.memory_mb == 0 ||
          (w.memory_mb >= JOB_SPEC_MIN_MEMORY_MB && w.memory_mb <= JOB_SPEC_MAX_MEMORY_MB));
    check(w.labels && w.n_labels <= j->n_labels && !w.labels[w.n_labels]);
    github_job_wants_clear(&w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *doc = (const char *)data + 1;
    size_t len = size - 1;
    struct al_error *err = NULL;
    int r;
    switch (data[0] % 9) {
    case 0: {
        struct github_job *j = NULL;
        r = github_webhook_parse(doc, len, &j, &err);
        if (r < 0) {
            check(!j);
            check_failure(r, err);
            break;
        }
        check(!err && j && j->repo && github_repo_is_valid(j->repo));
        check_job(j);
        github_job_free(j);
        break;
    }
    case 1: {
        int64_t id = 0;
        char *cfg = NULL;
        r = github_parse_jitconfig(doc, len, &id, &cfg, &err);
        if (r < 0) {
            check(!cfg);
            check_failure(r, err);
            break;
        }
        check(id > 0 && cfg && strlen(cfg) >= 8 && strlen(cfg) <= GITHUB_MAX_JIT);
        check(strspn(cfg, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") ==
              strlen(cfg));
        free(cfg);
        break;
    }
    case 2: {
        struct github_runner_list l = {0};
        r = github_parse_runners(doc, len, &l, &err);
        if (r < 0) {
            check(!l.v && !l.n);
            check_failure(r, err);
            break;
        }
        check(l.n <= GITHUB_MAX_ITEMS);
        for (size_t i = 0; i < l.n; i++)
            check(l.v[i].id > 0 && l.v[i].name);
        github_runner_list_clear(&l);
        break;
    }
    case 3: {
        struct github_run_list l = {0};
        r = github_parse_runs(doc, len, &l, &err);
        if (r < 0) {
            check(!l.v && !l.n);
            check_failure(r, err);
            break;
        }
        for (size_t i = 0; i < l.n; i++)
            check(l.v[i].id > 0);
        github_run_list_clear(&l);
        break;
    }
    case 4: {
        struct github_job_list l = {0};
        r = github_parse_jobs(doc, len, &l, &err);
        if (r < 0) {
            check(!l.v && !l.n);
            check_failure(r, err);
            break;
        }
        for (size_t i = 0; i < l.n; i++)
            check_job(l.v[i]);
        github_job_list_clear(&l);
        break;
    }
    case 5: {
        struct github_job *j = NULL;
        r = github_parse_job(doc, len, &j, &err);
        if (r < 0) {
            check(!j);
            check_failure(r, err);
            break;
        }
        check_job(j);
        github_job_free(j);
        break;
    }
    case 6: {
        char *tok = NULL;
        int64_t exp = 0;
        r = github_parse_token(doc, len, &tok, &exp, &err);
        if (r < 0) {
            check(!tok);
            check_failure(r, err);
            break;
        }
        check(strlen(tok) >= 8 && !strpbrk(tok, " \t\r\n"));
        free(tok);
        break;
    }
    case 7: {
        int64_t id = 0;
        r = github_parse_installation(doc, len, &id, &err);
        if (r < 0)
            check_failure(r, err);
        else
            check(id > 0);
        char msg[64];
        github_error_message(doc, len, msg, sizeof(msg));
        check(strlen(msg) < sizeof(msg));
        for (const char *p = msg; *p; p++)
            check((unsigned char)*p >= 0x20 && *p != 0x7f);
        break;
    }
    case 8: {
        /* a signature header and a body: never true for a random header */
        const char *nl = memchr(doc, '\n', len);
        if (!nl)
            break;
        char *header = strndup(doc, (size_t)(nl - doc));
        check(header != NULL);
        bool ok = github_signature_valid("test-secret", 11, nl + 1, len - (size_t)(nl + 1 - doc),
                                         header);
        if (ok)
            check(strncmp(header, "sha256=", 7) == 0 && strlen(header) == 71);
        (void)github_delivery_id_valid(header);
        free(header);
        break;
    }
    }
    return 0;
}
