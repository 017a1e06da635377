/* libFuzzer target for the job-spec parser (runner/engine/spec.c).
 *
 * Every input is parsed as a submitted spec and as a stored one. Beyond
 * "no crash, no sanitizer report" it checks the parser's contract:
 * a result or an error, never both; only the documented error codes; and
 * for accepted specs, that serialisation drops secret values and that
 * parse(to_json(spec)) serialises to the same bytes again.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/log.h"
#include "runner/engine/spec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond)
{
    if (!cond)
        abort();
}

static void round_trip(const struct job_spec *spec)
{
    char *json = NULL;
    size_t len = 0;
    check(job_spec_to_json(spec, &json, &len, NULL) == 0);
    check(strlen(json) == len);

    struct job_spec *back = NULL;
    struct al_error *err = NULL;
    if (job_spec_parse(json, len, JOB_SPEC_PARSE_STORED, &back, &err) != 0)
        abort(); /* what we write, we must read back */
    check(back->n_secret_env == spec->n_secret_env);
    for (size_t i = 0; i < back->n_secret_env; i++) {
        check(back->secret_env[i].value == NULL);
        check(strcmp(back->secret_env[i].name, spec->secret_env[i].name) == 0);
    }
    char *again = NULL;
    check(job_spec_to_json(back, &again, NULL, NULL) == 0);
    check(strcmp(json, again) == 0);
    free(again);
    free(json);
    job_spec_free(back);
}

static void parse_one(const uint8_t *data, size_t size, unsigned flags)
{
    struct job_spec *spec = NULL;
    struct al_error *err = NULL;
    int r = job_spec_parse((const char *)data, size, flags, &spec, &err);
    if (r < 0) {
        check(spec == NULL);
        check(err != NULL && err->message && err->message[0]);
        check(r == -EINVAL || r == -E2BIG || r == -ENOMEM);
        al_error_free(err);
        return;
    }
    check(r == 0 && spec != NULL && err == NULL);
    check((spec->command != NULL) != (spec->script != NULL));
    check(spec->n_env + spec->n_secret_env <= JOB_SPEC_MAX_ENV);
    round_trip(spec);
    /* every secret a submitted spec accepts, the redactor accepts */
    if (!(flags & JOB_SPEC_PARSE_STORED)) {
        check(job_spec_register_secrets(spec, NULL) == 0);
        job_spec_unregister_secrets(spec);
    }
    job_spec_free(spec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    parse_one(data, size, 0);
    parse_one(data, size, JOB_SPEC_PARSE_STORED);
    return 0;
}
