/* libFuzzer target for everything a scale set listener reads from the
 * Actions Service (runner/sources/github_scaleset_msg.c): message envelopes
 * with their double-encoded bodies, sessions, the runner-registration answer
 * and its JWT, lookups, scale sets, JIT configs, acquired ids, error bodies.
 *
 * The first byte picks the parser, the rest is the document. Beyond "no
 * crash, no sanitizer report" it checks the contract: a result or an error,
 * never both, only the documented codes, and what an accepted document
 * yields obeys the header's limits.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "runner/sources/github_scaleset_msg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond)
{
    if (!cond)
        abort();
}

static void check_failure_(int r, struct al_error **err)
{
    check(r == -EINVAL || r == -E2BIG || r == -ENOMEM);
    check(*err && al_error_message(*err)[0]);
    *err = al_error_free(*err);
}
#define check_failure(r, err) check_failure_((r), &(err))

static void check_stats(const struct scaleset_stats *s)
{
    check(s->available >= 0 && s->acquired >= 0 && s->assigned >= 0 && s->running >= 0 &&
          s->registered >= 0 && s->busy >= 0 && s->idle >= 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *doc = (const char *)data + 1;
    size_t len = size - 1;
    struct al_error *err = NULL;
    int r;
    switch (data[0] % 8) {
    case 0: {
        struct scaleset_message m = {0};
        r = scaleset_parse_message(doc, len, &m, &err);
        if (r < 0) {
            check(!m.jobs && !m.n_jobs);
            check_failure(r, err);
        } else {
            check(!err && m.id > 0 && m.n_jobs <= SCALESET_MAX_JOBS);
            check_stats(&m.stats);
            for (size_t i = 0; i < m.n_jobs; i++) {
                const struct scaleset_job *j = &m.jobs[i];
                check(j->kind == SCALESET_JOB_OTHER || j->request_id > 0);
                check(!j->runner_name ||
                      (j->runner_name[0] && strlen(j->runner_name) <= SCALESET_MAX_NAME &&
                       !strpbrk(j->runner_name, " \t\r\n")));
            }
            scaleset_message_clear(&m);
        }
        /* the acquirablejobs list shares the job parser */
        r = scaleset_parse_acquirable(doc, len, &m, &err);
        if (r < 0) {
            check(!m.jobs && !m.n_jobs);
            check_failure(r, err);
            break;
        }
        check(!err && m.id == 0 && m.n_jobs <= SCALESET_MAX_JOBS);
        for (size_t i = 0; i < m.n_jobs; i++)
            check(m.jobs[i].kind == SCALESET_JOB_OTHER ||
                  (m.jobs[i].kind == SCALESET_JOB_AVAILABLE && m.jobs[i].request_id > 0));
        scaleset_message_clear(&m);
        break;
    }
    case 1: {
        struct scaleset_session s = {0};
        r = scaleset_parse_session(doc, len, &s, &err);
        if (r < 0) {
            check(!s.session_id && !s.mq_url && !s.mq_token);
            check_failure(r, err);
            break;
        }
        check(strlen(s.session_id) == 36 && s.mq_token[0] &&
              strlen(s.mq_token) <= SCALESET_MAX_TOKEN);
        check(strncasecmp(s.mq_url, "http", 4) == 0);
        check_stats(&s.stats);
        scaleset_session_clear(&s);
        break;
    }
    case 2: {
        char *url = NULL, *tok = NULL;
        int64_t exp = 0;
        r = scaleset_parse_registration(doc, len, &url, &tok, &exp, &err);
        if (r < 0) {
            check(!url && !tok);
            check_failure(r, err);
            break;
        }
        check(url[0] && tok[0] && exp > 0);
        free(url);
        free(tok);
        break;
    }
    case 3: {
        /* a bare token: JWT parts */
        char *tok = strndup(doc, len);
        check(tok != NULL);
        int64_t exp = 0;
        r = scaleset_jwt_exp(tok, &exp, &err);
        if (r < 0)
            check_failure(r, err);
        else
            check(exp > 0);
        free(tok);
        break;
    }
    case 4: {
        int64_t id = -1;
        r = scaleset_parse_lookup(doc, len, &id, &err);
        if (r < 0)
            check_failure(r, err);
        else
            check(id >= 0);
        r = scaleset_parse_scaleset(doc, len, &id, &err);
        if (r < 0)
            check_failure(r, err);
        else
            check(id > 0);
        break;
    }
    case 5: {
        int64_t id = 0;
        char *cfg = NULL;
        r = scaleset_parse_jitconfig(doc, len, &id, &cfg, &err);
        if (r < 0) {
            check(!cfg);
            check_failure(r, err);
            break;
        }
        check(id > 0 && strlen(cfg) >= 8 && strlen(cfg) <= SCALESET_MAX_JIT);
        free(cfg);
        break;
    }
    case 6: {
        int64_t *ids = NULL;
        size_t n = 0;
        r = scaleset_parse_acquired(doc, len, &ids, &n, &err);
        if (r < 0) {
            check(!ids);
            check_failure(r, err);
            break;
        }
        check(n <= SCALESET_MAX_ACQUIRED);
        for (size_t i = 0; i < n; i++)
            check(ids[i] > 0);
        free(ids);
        break;
    }
    case 7: {
        char m[64];
        scaleset_error_message(doc, len, m, sizeof(m));
        check(strlen(m) < sizeof(m));
        for (const char *p = m; *p; p++)
            check((unsigned char)*p >= 0x20 && *p != 0x7f);
        (void)scaleset_error_is(doc, len, "Exception");
        break;
    }
    }
    return 0;
}
